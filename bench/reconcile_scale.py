"""Reconciliation of 100,000 ledger entries: time and peak memory against the function's limits.

Starts its own local stack, writes a consistent history of BENCH_RECONCILE_ENTRIES (100,000)
ledger entries over 400 accounts (one holding a tenth of them), with their orders, codes and
usage records, straight into the embedded DynamoDB (tests/support/ledger_world.py), then:

- runs the scheduled function through the Invoke API, as its schedule does (in a worker
  with the template's Timeout; the result must be clean): wall time against Timeout;
- runs the same handler (functions/reconcile/app.py, with the function's environment) in a
  fresh interpreter of its own, which reports its peak resident memory (ru_maxrss, imports
  included): against MemorySize. Memory follows the largest account and a tally per
  redeemed code, not the table, so this stays far below MemorySize as the tables grow.

The embedded AWS is moto behind one lock, and the machine is shared: the seconds compare
runs here, not with AWS (where reads of one partition do not queue behind everything else).

    .venv/bin/python bench/reconcile_scale.py
Writes bench/results/reconcile_scale.json.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.stack import LocalStack

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = int(os.environ.get("BENCH_RECONCILE_ENTRIES", "100000"))
ACCOUNTS = int(os.environ.get("BENCH_RECONCILE_ACCOUNTS", "400"))
RESULTS = ROOT / "bench" / "results" / "reconcile_scale.json"
FUNCTION = "ReconcileFunction"
EVENT = ROOT / "events" / "reconcile_schedule.json"
_TABLE_VARIABLES = {
    "accounts": "ACCOUNTS_TABLE",
    "ledger": "LEDGER_TABLE",
    "orders": "ORDERS_TABLE",
    "usage": "USAGE_TABLE",
    "codes": "REDEMPTION_CODES_TABLE",
}


def limits() -> tuple[int, int]:
    """The function's Timeout (s) and MemorySize (MB) in the template."""
    sys.path[:0] = [str(ROOT)]
    from local.template import load_yaml

    properties = load_yaml(ROOT / "infra" / "template.yaml")["Resources"][FUNCTION]["Properties"]
    return int(properties["Timeout"]), int(properties["MemorySize"])


class _Context:
    """What the handler uses of Lambda's context, with the function's Timeout."""

    function_name = FUNCTION
    function_version = "$LATEST"
    invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION}"
    aws_request_id = "bench-reconcile"
    log_group_name = f"/aws/lambda/{FUNCTION}"
    log_stream_name = "bench"

    def __init__(self, timeout: int, memory_size: int) -> None:
        self.memory_limit_in_mb = memory_size
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def handler_in_this_process(timeout: int, memory_size: int) -> None:
    """Child mode: import the handler as Lambda would (its directory and the layer only), run
    it once and print its result, time and peak memory."""
    sys.path[:0] = [str(ROOT / "functions" / "reconcile"), str(ROOT / "layers" / "common")]
    import app

    started = time.perf_counter()
    result = app.handler(json.loads(EVENT.read_text()), _Context(timeout, memory_size))
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    print(json.dumps({"result": result, "seconds": seconds, "peak_rss_mb": peak_kb / 1024}))


def invoke(stack: LocalStack, timeout: int) -> tuple[dict[str, Any], float]:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "lambda",
        endpoint_url=stack.base_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=timeout + 60),
    )
    started = time.perf_counter()
    response = client.invoke(FunctionName=FUNCTION, Payload=EVENT.read_bytes())
    seconds = time.perf_counter() - started
    result: dict[str, Any] = json.loads(response["Payload"].read())
    if response.get("FunctionError"):
        raise RuntimeError(f"{FUNCTION} failed: {result}")
    return result, seconds


def in_a_fresh_interpreter(
    stack: LocalStack, tables: dict[str, str], timeout: int, memory_size: int
) -> dict[str, Any]:
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_ENDPOINT_URL": stack.aws_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "reconcile",
        "POWERTOOLS_METRICS_NAMESPACE": "QuotaTopup",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "LOG_LEVEL": "WARNING",
        **{variable: tables[name] for name, variable in _TABLE_VARIABLES.items()},
    }
    done = subprocess.run(
        [sys.executable, __file__, "--handler", str(timeout), str(memory_size)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout + 120,
        check=True,
    )
    # The last line is ours; the metric the handler flushes is printed before it.
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


def main() -> int:
    sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]
    from tests.support import ledger_world
    from tests.support.stack import LocalStack

    timeout, memory_size = limits()
    stack = LocalStack("bench-reconcile")
    stack.start()
    try:
        tables = ledger_world.stack_tables(stack)
        started = time.perf_counter()
        world = ledger_world.seed(stack.aws_endpoint, tables, ENTRIES, accounts=ACCOUNTS)
        seeded = time.perf_counter() - started
        invoked, invoke_seconds = invoke(stack, timeout)
        direct = in_a_fresh_interpreter(stack, tables, timeout, memory_size)
    finally:
        stack.stop()
    for result in (invoked, direct["result"]):
        if not result["clean"] or result["counts"]["ledger_entries"] != ENTRIES:
            raise RuntimeError(f"the seeded data did not reconcile clean: {result}")
    largest = ENTRIES // 10
    report = {
        "ledger_entries": ENTRIES,
        "accounts": world.counts["accounts"],
        "largest_account_entries": largest,
        "items_seeded": sum(world.counts.values()),
        "seed_seconds": round(seeded, 1),
        "counts": invoked["counts"],
        "timeout_seconds": timeout,
        "invoke_seconds": round(invoke_seconds, 1),
        "within_timeout": invoke_seconds < timeout,
        "memory_size_mb": memory_size,
        "peak_rss_mb": round(direct["peak_rss_mb"], 1),
        "within_memory_size": direct["peak_rss_mb"] < memory_size,
        "fresh_interpreter_seconds": round(direct["seconds"], 1),
        "differences": invoked["differences"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--handler"]:
        handler_in_this_process(int(sys.argv[2]), int(sys.argv[3]))
        raise SystemExit(0)
    raise SystemExit(main())
