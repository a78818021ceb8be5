"""DynamoDB calls per account route (issue 2): POST /account (new and existing), GET /account,
GET /ledger and GET /usage, measured on a local stack through GET /_local/stats.

Each route is first called once so the function's worker is warm and its settings cached,
then measured SAMPLES times; the median count per operation is reported.
Writes bench/results/account_calls.json.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]

from tests.support.stack import LocalStack  # noqa: E402

SAMPLES = int(os.environ.get("BENCH_SAMPLES", "5"))


def dynamodb_calls(stack: LocalStack, action: Callable[[], Any]) -> dict[str, int]:
    """The DynamoDB calls of one request; retried if another function (a schedule) ran meanwhile."""
    while True:
        stack.reset_stats()
        response = action()
        assert response.status_code < 300, response.text
        stats = stack.stats()
        ran = {name for name, count in stats.get("invocations", {}).items() if count}
        if ran <= {"AccountFunction"}:
            break
    return {
        name.removeprefix("dynamodb."): int(count)
        for name, count in stats["calls"].items()
        if name.startswith("dynamodb.")
    }


def median_calls(samples: list[dict[str, int]]) -> dict[str, float]:
    operations = sorted({op for sample in samples for op in sample})
    return {op: statistics.median(sample.get(op, 0) for sample in samples) for op in operations}


def main() -> dict[str, Any]:
    with LocalStack("bench-account") as stack:
        stack.start()
        warm = stack.token(f"warm-{uuid.uuid4().hex[:8]}")
        for method, path in (("POST", "/account"), ("GET", "/account"), ("GET", "/ledger")):
            stack.request(method, path, token=warm, json={} if method == "POST" else None)
        routes: dict[str, list[dict[str, int]]] = {}
        for _ in range(SAMPLES):
            token = stack.token(f"bench-{uuid.uuid4().hex[:10]}")

            def call(method: str, path: str, token: str = token) -> Any:
                body: dict[str, Any] | None = {} if method == "POST" else None
                return stack.request(method, path, token=token, json=body)

            for name, method, path in (
                ("POST /account (new)", "POST", "/account"),
                ("POST /account (existing)", "POST", "/account"),
                ("GET /account", "GET", "/account"),
                ("GET /ledger", "GET", "/ledger"),
                ("GET /usage", "GET", "/usage"),
            ):
                routes.setdefault(name, []).append(
                    dynamodb_calls(stack, functools.partial(call, method, path))
                )
    result = {name: median_calls(samples) for name, samples in routes.items()}
    print(f"DynamoDB calls per account route (median of {SAMPLES}):")
    for name, calls in result.items():
        total = sum(calls.values())
        detail = ", ".join(f"{op} {count:g}" for op, count in calls.items())
        print(f"  {name:<26} {total:g} call(s): {detail}")
    out = ROOT / "bench" / "results" / "account_calls.json"
    out.write_text(json.dumps({"samples": SAMPLES, "routes": result}, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
