"""What the local stack adds to a charge: charges per second through the Lambda Invoke API on
the local stack ÷ the same charges made by the metering handler called directly in one
process against the same embedded DynamoDB (issue 20; goal ≥ 0.5).

Both sides run the same code (functions/meter_usage/app.py over the layer) with the same
environment and issue the same ledger transactions (one read, one TransactWriteItems per
charge) to the same moto; the Invoke API side adds what Lambda emulation costs: the gateway's
HTTP and IAM check, a worker process per concurrent call and its pipe. Rounds alternate
between the two sides in one run, so both see the same machine and the same table sizes (moto
slows down as tables grow).

    .venv/bin/python bench/local_overhead.py   (BENCH_ROUNDS=4, BENCH_CHARGES=120, BENCH_CLIENTS=6)
Writes bench/results/local_overhead.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]

from local.template import Template  # noqa: E402
from tests.support.metering import funded_user, usage_event  # noqa: E402
from tests.support.stack import LocalStack  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))
CHARGES = int(os.environ.get("BENCH_CHARGES", "120"))
# The stack runs at most LOCAL_MAX_INSTANCES (6) workers per function: as many clients.
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "6"))
FUNCTION = "MeterUsageFunction"
GOAL = 0.5
RESULTS = ROOT / "bench" / "results" / "local_overhead.json"
DRIVER = ROOT / "bench" / "support" / "direct_meter.py"


def charges(users: list[str]) -> list[dict[str, Any]]:
    return [usage_event(users[i % len(users)]) for i in range(CHARGES)]


def through_invoke(stack: LocalStack, events: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        results = list(pool.map(lambda event: stack.invoke(FUNCTION, event), events))
    seconds = time.perf_counter() - started
    assert all(r["status"] == "charged" for r in results), results[:3]
    return seconds


def direct_environment(stack: LocalStack) -> tuple[dict[str, str], Path]:
    """The function's environment as the stack gives it, pointed at its embedded AWS."""
    template = Template(ROOT / "infra" / "template.yaml")
    template.aws_endpoint = stack.aws_endpoint
    spec = template.function(FUNCTION)
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": f"{ROOT / 'layers' / 'common'}",
        "POWERTOOLS_TRACE_DISABLED": "true",
        **{k: str(v) for k, v in spec.environment.items()},
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": stack.aws_endpoint,
        "AWS_LAMBDA_FUNCTION_NAME": FUNCTION,
        "TZ": "UTC",
    }
    return environment, spec.code_dir


def directly(environment: dict[str, str], code_dir: Path, rounds: list[list[Any]]) -> list[float]:
    """One process: imports the handler once, runs each round with CLIENTS threads."""
    done = subprocess.run(
        [sys.executable, str(DRIVER), str(code_dir), str(CLIENTS)],
        input=json.dumps(rounds),
        env=environment,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    seconds: list[float] = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    return seconds


def main() -> int:
    stack = LocalStack("bench-overhead")
    stack.start(env={"LOCAL_SCHEDULES": "0"})
    try:
        users = [funded_user(stack, 10**9) for _ in range(CLIENTS * 2)]
        # Warm every worker and the direct process's imports first: no cold starts measured.
        through_invoke(stack, charges(users)[: CLIENTS * 2])
        environment, code_dir = direct_environment(stack)
        directly(environment, code_dir, [charges(users)[: CLIENTS * 2]])
        invoke_seconds: list[float] = []
        direct_seconds: list[float] = []
        for _ in range(ROUNDS):
            invoke_seconds.append(through_invoke(stack, charges(users)))
            # Two direct rounds in one process: the first pays its imports (not counted).
            direct_seconds.append(
                directly(environment, code_dir, [charges(users)[:CLIENTS], charges(users)])[1]
            )
    finally:
        stack.stop()
    invoke_rate = CHARGES / statistics.median(invoke_seconds)
    direct_rate = CHARGES / statistics.median(direct_seconds)
    ratio = invoke_rate / direct_rate
    report = {
        "goals": {
            "local_overhead_ratio": {
                "value": round(ratio, 2),
                "goal": f">= {GOAL} (Invoke API charges/s ÷ the handler called directly)",
                "met": ratio >= GOAL,
            }
        },
        "invoke_api_charges_per_second": round(invoke_rate, 1),
        "direct_charges_per_second": round(direct_rate, 1),
        "rounds": ROUNDS,
        "charges_per_round": CHARGES,
        "clients": CLIENTS,
        "cpus": os.cpu_count(),
        "note": (
            "medians of alternating rounds in one run; both sides call the same embedded "
            "DynamoDB (moto behind one lock), so the ratio is what Lambda emulation costs"
        ),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"charges/s through the Invoke API   {invoke_rate:8.1f}")
    print(f"charges/s, handler called directly {direct_rate:8.1f}")
    print(f"ratio {ratio:.2f}   goal: >= {GOAL}{' ✅' if ratio >= GOAL else ' ❌'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
