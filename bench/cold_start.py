"""Cold start: import time of each handler module versus a bare `import boto3`.

Goal (issue 2): each handler imports in under 1.3x the time of `import boto3` alone.
Every figure is the median of BENCH_RUNS fresh interpreters (a new Lambda instance each), the
configurations interleaved so that machine noise hits them alike.

- deployed: what Lambda runs. Each function's `sam build` artifact over the built CommonLayer,
  under Python 3.12 (the functions' runtime) with bytecode writes off, as /var/task and /opt are
  read-only; boto3/botocore come from a 3.12 directory like the runtime's own (the pinned
  versions, installed once into .aws-sam/bench-runtime), and the baseline imports boto3 from it.
  Run `make build` first (`make bench` does).
- library floors: what a handler imports from the libraries DESIGN.md names before a line of
  ours, deployed the same way. HTTP: pynamodb (botocore), Powertools' HTTP resolver with
  request validation (pydantic), Logger. Queue: pynamodb, Powertools' batch processor, Logger,
  pydantic (the settings document). No handler of that kind can import faster than its floor.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.runtime import python312  # noqa: E402

BUILD = ROOT / ".aws-sam" / "build"
LAYER = BUILD / "CommonLayer" / "python"
RUNTIME = ROOT / ".aws-sam" / "bench-runtime"
RUNS = int(os.environ.get("BENCH_RUNS", "7"))
GOAL_RATIO = 1.3
FLOORS = {
    "http": (
        "pynamodb + Powertools' HTTP resolver with validation + Logger",
        "import pynamodb.models, pynamodb.transactions; "
        "from aws_lambda_powertools import Logger; "
        "from aws_lambda_powertools.event_handler import APIGatewayHttpResolver; "
        "APIGatewayHttpResolver(enable_validation=True)",
    ),
    "queue": (
        "pynamodb + Powertools' batch processor + Logger + pydantic",
        "import pynamodb.models, pynamodb.transactions, pydantic; "
        "from aws_lambda_powertools import Logger; "
        "from aws_lambda_powertools.utilities.batch import BatchProcessor",
    ),
}

TIMER = """
import sys, time
sys.path[:0] = {paths!r}
start = time.perf_counter()
{statement}
print(time.perf_counter() - start)
"""

FUNCTION = re.compile(
    r"^  (\w+):\n    Type: AWS::Serverless::Function\n    Properties:\n"
    r"(?:      .*\n)*?      CodeUri: \.\./functions/(\w+)",
    re.MULTILINE,
)
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
    }
    if deployed:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    out = subprocess.run(
        [python, "-s", "-c", TIMER.format(paths=paths, statement=statement)],
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


def deployed_functions() -> dict[str, Path]:
    """functions/<name> -> its sam build artifact (.aws-sam/build/<LogicalId>)."""
    if not (LAYER / "billing").is_dir():
        raise SystemExit("cold_start: no sam build in .aws-sam/build: run `make build` first")
    template = (ROOT / "infra" / "template.yaml").read_text()
    found = {}
    for logical_id, name in FUNCTION.findall(template):
        if (BUILD / logical_id / "app.py").is_file():
            found[name] = BUILD / logical_id
    return found


def rows_for(times: dict[str, float], prefix: str, baseline: float) -> list[dict[str, Any]]:
    rows = []
    for name, millis in times.items():
        if not name.startswith(prefix):
            continue
        ratio = millis / baseline
        rows.append(
            {
                "function": name.removeprefix(prefix),
                "import_ms": round(millis, 1),
                "ratio_to_boto3": round(ratio, 2),
                "goal_ratio": GOAL_RATIO,
                "meets_goal": ratio < GOAL_RATIO,
            }
        )
    return rows


def main() -> dict[str, Any]:
    py312 = python312()
    ensure_runtime(py312)
    runtime, layer = str(RUNTIME), str(LAYER)
    cases: dict[str, Case] = {
        "deployed:boto3": (py312, "import boto3", [runtime], True),
        **{
            f"deployed:floor:{kind}": (py312, statement, [layer, runtime], True)
            for kind, (_, statement) in FLOORS.items()
        },
        "source:boto3": (sys.executable, "import boto3", [], False),
    }
    for name, artifact in deployed_functions().items():
        cases[f"deployed:fn:{name}"] = (py312, "import app", [str(artifact), layer, runtime], True)
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
        "handlers": rows_for(times, "deployed:fn:", deployed_base),
        "source_tree": {
            "boto3_import_ms": round(source_base, 1),
            "handlers": rows_for(times, "source:fn:", source_base),
        },
    }
    print(f"deployed (Python 3.12, sam build artifacts, read-only), median of {RUNS}:")
    print(f"  bare `import boto3`: {deployed_base:.1f} ms")
    for floor in floors:
        print(
            f"  {floor['kind']} library floor ({floor['imports']}): {floor['import_ms']} ms"
            f" = {floor['ratio_to_boto3']}x boto3"
        )
    tables = (("deployed", result["handlers"]), ("source tree", result["source_tree"]["handlers"]))
    for label, rows in tables:
        print(f"{label}: {'function':<20} {'import ms':>10} {'x boto3':>8}  goal < {GOAL_RATIO}x")
        for row in rows:
            mark = "ok" if row["meets_goal"] else "MISSED"
            ratio = row["ratio_to_boto3"]
            print(f"  {row['function']:<20} {row['import_ms']:>10} {ratio:>8}  {mark}")
    out = ROOT / "bench" / "results" / "cold_start.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
