"""Cold start: import time of each handler module versus its library floor and `import boto3`.

Goal (issue 20): each deployed handler imports within 0.1x of its library floor (at most 1.1x the
floor's time). Every figure is the median of BENCH_RUNS fresh interpreters (a new Lambda
instance each), the configurations interleaved so that machine noise hits them alike.

- deployed: what Lambda runs. Each function's `sam build` artifact over the layers the template
  gives it (the core layer; the payments layer too for the functions that call providers),
  unpacked into one /opt in their order as Lambda does, under Python 3.12 (the functions'
  runtime) with bytecode writes off, as /var/task and /opt are read-only; boto3/botocore come
  from a 3.12 directory like the runtime's own (the pinned versions with their dependencies,
  installed once into .aws-sam/bench-runtime), and the baseline imports boto3 from it. Run
  `make build` first (`make bench` does).
- library floors: what a handler imports from the libraries DESIGN.md names before a line of
  ours, over the core layer. HTTP: pynamodb (botocore), Powertools' HTTP resolver with request
  validation (pydantic), Logger; a webhook (HTTP without a table) the same without pynamodb.
  Queue: pynamodb, Powertools' batch processor, Logger, pydantic's BaseModel (the settings
  document; `import pydantic` alone loads next to nothing of it, its names load lazily).
  Task (scheduled, no event payload to parse): pynamodb and Logger, plus pydantic for a task
  that reads the settings document (validated with pydantic, as in the queue floor). A
  function's floor follows from its template: HttpApi events (and a *_TABLE variable or not),
  SQS events, or neither (and ssm:GetParameter in its policy or not).
  No handler of that kind can import faster than its floor; what is ours is the difference.
- source tree: the checkout with the dev venv (cached bytecode), as the tests import it.

Writes bench/results/cold_start.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from local.template import Template  # noqa: E402
from tests.support.runtime import python312  # noqa: E402

BUILD = ROOT / ".aws-sam" / "build"
CORE_LAYER = "CommonLayer"
LAYER = BUILD / CORE_LAYER / "python"
RUNTIME = ROOT / ".aws-sam" / "bench-runtime"
OPT = ROOT / ".aws-sam" / "bench-opt"
RUNS = int(os.environ.get("BENCH_RUNS", "7"))
GOAL_RATIO_TO_FLOOR = 1.1  # within 0.1x of the floor
FLOORS = {
    "http": (
        "pynamodb + Powertools' HTTP resolver with validation + Logger",
        "import pynamodb.models, pynamodb.transactions; "
        "from aws_lambda_powertools import Logger; "
        "from aws_lambda_powertools.event_handler import APIGatewayHttpResolver; "
        "APIGatewayHttpResolver(enable_validation=True)",
    ),
    "webhook": (
        "Powertools' HTTP resolver with validation + Logger (no table: no pynamodb)",
        "from aws_lambda_powertools import Logger; "
        "from aws_lambda_powertools.event_handler import APIGatewayHttpResolver; "
        "APIGatewayHttpResolver(enable_validation=True)",
    ),
    "queue": (
        "pynamodb + Powertools' batch processor + Logger + pydantic",
        "import pynamodb.models, pynamodb.transactions; from pydantic import BaseModel; "
        "from aws_lambda_powertools import Logger; "
        "from aws_lambda_powertools.utilities.batch import BatchProcessor",
    ),
    "task": (
        "pynamodb + Logger",
        "import pynamodb.models, pynamodb.transactions; from aws_lambda_powertools import Logger",
    ),
    "settings_task": (
        # A document with bounds (Field(gt=0)) makes pydantic import its constraint types
        # (annotated_types, pydantic.types): library code, which the http floor's validating
        # resolver imports too.
        "pynamodb + Logger + pydantic with field constraints (a task that reads the settings "
        "document)",
        "import pynamodb.models, pynamodb.transactions; from pydantic import BaseModel, Field; "
        "Field(gt=0); from aws_lambda_powertools import Logger",
    ),
}


def global_environment() -> dict[str, str]:
    """The template's Globals environment variables that are plain strings."""
    variables = (
        Template(ROOT / "infra" / "template.yaml")
        .raw.get("Globals", {})
        .get("Function", {})
        .get("Environment", {})
        .get("Variables", {})
    )
    return {name: value for name, value in variables.items() if isinstance(value, str)}


GLOBAL_ENVIRONMENT = global_environment()

TIMER = """
import sys, time
sys.path[:0] = {paths!r}
start = time.perf_counter()
{statement}
print(time.perf_counter() - start)
"""

Case = tuple[str, str, list[str], bool]  # python, statement, sys.path head, deployed


def pinned(package: str) -> str:
    match = re.search(rf'"{package}==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    if not match:
        raise SystemExit(f"cold_start: pyproject.toml pins no {package}")
    return match.group(1)


def ensure_runtime(python: str) -> None:
    """boto3/botocore for 3.12, as the Lambda runtime provides them (with their bytecode)."""
    stamp = RUNTIME / f".boto3-{pinned('boto3')}"
    if stamp.exists():
        return
    shutil.rmtree(RUNTIME, ignore_errors=True)
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    packages = [f"boto3=={pinned('boto3')}", f"botocore=={pinned('botocore')}"]
    subprocess.run(
        [*pip, "--target", str(RUNTIME), *packages],
        check=True,
        capture_output=True,
    )
    stamp.touch()


def run_once(case: Case) -> float:
    python, statement, paths, deployed = case
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SETTINGS_PARAMETER": "/bench/settings",
        "POWERTOOLS_SERVICE_NAME": "bench",
        # Lambda sets it in every function's process; billing.init_phase keys on it.
        "AWS_LAMBDA_FUNCTION_NAME": "bench",
        # What the template gives every function (Globals), floors and handlers alike.
        **GLOBAL_ENVIRONMENT,
    }
    # Deployed: isolated (no site-packages, no PYTHONPATH, nothing outside the paths given, as
    # in Lambda) and writing no bytecode, as /var/task and /opt are read-only.
    flags = ["-I", "-S", "-B"] if deployed else ["-s"]
    out = subprocess.run(
        [python, *flags, "-c", TIMER.format(paths=paths, statement=statement)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def measure(cases: dict[str, Case]) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(RUNS):
        for name, case in cases.items():
            samples[name].append(run_once(case))
    return {name: statistics.median(values) * 1000 for name, values in samples.items()}


@dataclass(frozen=True)
class Deployed:
    name: str  # functions/<name>
    artifact: Path  # its sam build artifact (.aws-sam/build/<LogicalId>)
    layers: tuple[str, ...]  # its layers' logical ids, in order
    floor: str  # the FLOORS kind it is measured against


def floor_kind(props: dict[str, Any]) -> str:
    """The library floor of a function, from its template properties."""
    events = {str(e.get("Type")) for e in (props.get("Events") or {}).values()}
    variables = (props.get("Environment") or {}).get("Variables") or {}
    if "HttpApi" in events:
        return "http" if any(k.endswith("_TABLE") for k in variables) else "webhook"
    if "SQS" in events:
        return "queue"
    # The settings document is validated with pydantic (billing.settings), as the queue floor
    # counts it: a task whose policy may read the parameter needs pydantic, one that may not
    # does not.
    return "settings_task" if "ssm:GetParameter" in _actions(props) else "task"


def _actions(props: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for policy in props.get("Policies") or []:
        if not isinstance(policy, dict):
            continue
        for statement in policy.get("Statement") or []:
            action = statement.get("Action") if isinstance(statement, dict) else None
            found.update([action] if isinstance(action, str) else action or [])
    return found


def deployed_functions() -> list[Deployed]:
    """Every function of the template that sam build built."""
    if not (LAYER / "billing").is_dir():
        raise SystemExit("cold_start: no sam build in .aws-sam/build: run `make build` first")
    template = Template(ROOT / "infra" / "template.yaml")
    found = []
    for logical_id in template.function_ids():
        props = template.function_properties(logical_id)
        artifact = BUILD / logical_id
        if not (artifact / "app.py").is_file():
            continue
        layers = tuple(str(layer["Ref"]) for layer in props.get("Layers") or [])
        name = Path(str(props["CodeUri"])).name
        found.append(Deployed(name, artifact, layers, floor_kind(props)))
    return found


def opt_for(layers: tuple[str, ...]) -> Path:
    """/opt/python with these built layers unpacked in order, as Lambda unpacks them."""
    target = OPT / "+".join(layers) / "python"
    shutil.rmtree(target.parent, ignore_errors=True)
    target.mkdir(parents=True)
    for layer in layers:
        shutil.copytree(BUILD / layer / "python", target, symlinks=True, dirs_exist_ok=True)
    return target


def handler_rows(
    times: dict[str, float], functions: list[Deployed], baseline: float
) -> list[dict[str, Any]]:
    rows = []
    for fn in functions:
        millis, floor = times[f"deployed:fn:{fn.name}"], times[f"deployed:floor:{fn.floor}"]
        ratio = millis / floor
        rows.append(
            {
                "function": fn.name,
                "layers": list(fn.layers),
                "import_ms": round(millis, 1),
                "floor": fn.floor,
                "floor_ms": round(floor, 1),
                "ratio_to_floor": round(ratio, 2),
                "ratio_to_boto3": round(millis / baseline, 2),
                "goal_ratio_to_floor": GOAL_RATIO_TO_FLOOR,
                "meets_goal": ratio <= GOAL_RATIO_TO_FLOOR,
            }
        )
    return rows


def source_rows(times: dict[str, float], baseline: float) -> list[dict[str, Any]]:
    return [
        {
            "function": name.removeprefix("source:fn:"),
            "import_ms": round(millis, 1),
            "ratio_to_boto3": round(millis / baseline, 2),
        }
        for name, millis in times.items()
        if name.startswith("source:fn:")
    ]


def main() -> dict[str, Any]:
    py312 = python312()
    ensure_runtime(py312)
    runtime, core = str(RUNTIME), str(opt_for((CORE_LAYER,)))
    functions = deployed_functions()
    cases: dict[str, Case] = {
        "deployed:boto3": (py312, "import boto3", [runtime], True),
        **{
            f"deployed:floor:{kind}": (py312, statement, [core, runtime], True)
            for kind, (_, statement) in FLOORS.items()
        },
        "source:boto3": (sys.executable, "import boto3", [], False),
    }
    opts = {layers: str(opt_for(layers)) for layers in {fn.layers for fn in functions}}
    for fn in functions:
        paths = [str(fn.artifact), opts[fn.layers], runtime]
        cases[f"deployed:fn:{fn.name}"] = (py312, "import app", paths, True)
    source_layer = str(ROOT / "layers" / "common")
    for function_dir in sorted((ROOT / "functions").iterdir()):
        if (function_dir / "app.py").exists():
            cases[f"source:fn:{function_dir.name}"] = (
                sys.executable,
                "import app",
                [str(function_dir), source_layer],
                False,
            )
    times = measure(cases)
    deployed_base, source_base = times["deployed:boto3"], times["source:boto3"]
    floors = [
        {
            "kind": kind,
            "imports": description,
            "import_ms": round(times[f"deployed:floor:{kind}"], 1),
            "ratio_to_boto3": round(times[f"deployed:floor:{kind}"] / deployed_base, 2),
        }
        for kind, (description, _) in FLOORS.items()
    ]
    result: dict[str, Any] = {
        "runs": RUNS,
        "boto3_import_ms": round(deployed_base, 1),
        "library_floors": floors,
        "handlers": handler_rows(times, functions, deployed_base),
        "source_tree": {
            "boto3_import_ms": round(source_base, 1),
            "handlers": source_rows(times, source_base),
        },
    }
    print(f"deployed (Python 3.12, sam build artifacts, read-only), median of {RUNS}:")
    print(f"  bare `import boto3`: {deployed_base:.1f} ms")
    for floor in floors:
        print(
            f"  {floor['kind']} library floor ({floor['imports']}): {floor['import_ms']} ms"
            f" = {floor['ratio_to_boto3']}x boto3"
        )
    print(f"  {'function':<20} {'import ms':>10} {'floor':>8} {'x floor':>8}  goal <= 1.1x")
    for row in result["handlers"]:
        mark = "ok" if row["meets_goal"] else "MISSED"
        print(
            f"  {row['function']:<20} {row['import_ms']:>10} {row['floor']:>8} "
            f"{row['ratio_to_floor']:>8}  {mark}"
        )
    out = ROOT / "bench" / "results" / "cold_start.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
