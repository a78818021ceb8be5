"""Usage insight on the local stack: what a charge writes, and GET /usage/summary latency.

- Write items per charge, from the metering function's own calls (GET /_local/iam counts
  each item of a transaction as its action): the rollups add nothing to the charge's
  transaction (account update + ledger entry + usage record = 3 items), and the rollup's
  own writes are UsageRollupFunction's, off the charge path.
- Summary latency for a user whose rollups stand for 100k usage records over 92 days
  (4 models x 5 keys a day: 1840 rollup items), seeded straight into the embedded
  DynamoDB's rollups table (the summary reads only the rollups, so the usage records
  themselves do not change what it reads); p50/p95 of GET /usage/summary over 30 and 92
  days by day, model and key.

    .venv/bin/python bench/usage_summary.py        (BENCH_ROUNDS=20, BENCH_DAYS=92 by default)
Writes bench/results/usage_summary.json.

Finding (first run): the embedded DynamoDB answers a Query of one partition in time that grows
faster than its item count: 600 rollup items (30 days) take 2-4 s a summary here, and 1840
(92 days) exceeded the account function's 15 s Timeout. In AWS such a Query is a few 1 MB
pages (tens of ms); the committed figures are from BENCH_DAYS=30 BENCH_ROUNDS=5.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]

from local.aws import INTERNAL_USER_AGENT  # noqa: E402
from tests.support.stack import LocalStack, wait_for  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))
RECORDS = 100_000
DAYS = int(os.environ.get("BENCH_DAYS", "92"))  # days of seeded rollups (and the longest range)
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "dall-e-3")
KEYS = ("key-a", "key-b", "key-c", "key-d", None)
RESULTS = ROOT / "bench" / "results" / "usage_summary.json"


def internal(stack: LocalStack, service: str) -> Any:
    return stack.boto3_client(service, user_agent_extra=INTERNAL_USER_AGENT)


def funded_user(stack: LocalStack) -> str:
    user = f"bench-{uuid.uuid4().hex[:12]}"
    stack.request("POST", "/account", token=stack.token(user), json={}).raise_for_status()
    stack.request(
        "POST",
        f"/admin/accounts/{user}/adjust",
        token=stack.token("bench-admin", admin=True),
        json={"delta": 10**12, "reason": "bench"},
    ).raise_for_status()
    return user


def meter_actions(stack: LocalStack) -> Counter[str]:
    report = stack.iam()["functions"]["MeterUsageFunction"]["allowed"]
    return Counter({k: int(v) for k, v in report.items()})


def write_items_per_charge(stack: LocalStack, charges: int = 20) -> dict[str, Any]:
    user = funded_user(stack)
    before = meter_actions(stack)
    for _ in range(charges):
        result = stack.invoke(
            "MeterUsageFunction",
            {
                "action": "charge",
                "request_id": f"bench-{uuid.uuid4().hex}",
                "user_id": user,
                "model": "gpt-4o",
                "prompt_tokens": 80,
                "completion_tokens": 0,
            },
        )
        assert result["status"] == "charged", result
    after = meter_actions(stack) - before
    writes = {k: v / charges for k, v in after.items() if k.endswith(("PutItem", "UpdateItem"))}
    token = stack.token(user)
    wait_for(
        lambda: (
            stack.request("GET", "/usage/summary", token=token).json()["total"]["requests"]
            == charges
        ),
        timeout=60,
        message="the rollups",
    )
    return {
        "charges": charges,
        "write_items_per_charge": sum(writes.values()),
        "per_action": dict(sorted(writes.items())),
    }


def seed_rollups(stack: LocalStack, user: str, today: date) -> int:
    client = internal(stack, "dynamodb")
    table = stack.table_name("UsageRollupsTable")
    cells = [
        (today - timedelta(days=d), model, key)
        for d in range(DAYS)
        for model in MODELS
        for key in KEYS
    ]
    per_cell, extra = divmod(RECORDS, len(cells))
    items = []
    for index, (day, model, key) in enumerate(cells):
        requests = per_cell + (1 if index < extra else 0)
        key_part = "-" if key is None else f"k:{key}"
        item: dict[str, Any] = {
            "user_id": {"S": user},
            "bucket": {"S": f"{day.isoformat()}#{model}#{key_part}"},
            "day": {"S": day.isoformat()},
            "model": {"S": model},
            "quota": {"N": str(requests * 137)},
            "requests": {"N": str(requests)},
            "prompt_tokens": {"N": str(requests * 900)},
            "completion_tokens": {"N": str(requests * 250)},
        }
        if key is not None:
            item["key_id"] = {"S": key}
        items.append({"PutRequest": {"Item": item}})
    for start in range(0, len(items), 25):
        pending = {table: items[start : start + 25]}
        while pending:
            pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
    return len(items)


def summary_latency(stack: LocalStack) -> dict[str, Any]:
    user = funded_user(stack)
    today = stack.billing_now().date()
    seeded = seed_rollups(stack, user, today)
    token = stack.token(user)
    cases = {}
    for days in sorted({min(30, DAYS), DAYS}):
        span = {"from": (today - timedelta(days=days - 1)).isoformat(), "to": today.isoformat()}
        for group_by in ("day", "model", "key"):
            timings = []
            answer: dict[str, Any] = {}
            for _ in range(ROUNDS):
                started = time.perf_counter()
                response = stack.request(
                    "GET", "/usage/summary", token=token, params={**span, "group_by": group_by}
                )
                timings.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
                answer = response.json()
            if days == DAYS:
                assert answer["total"]["requests"] == RECORDS, answer["total"]
            timings.sort()
            cases[f"{days}d_{group_by}"] = {
                "p50_ms": round(statistics.median(timings), 1),
                "p95_ms": round(timings[max(0, int(len(timings) * 0.95) - 1)], 1),
                "buckets": len(answer["buckets"]),
            }
    return {"usage_records_represented": RECORDS, "rollup_items": seeded, "cases": cases}


def main() -> int:
    with LocalStack("bench-usage-summary").start(env={"LOCAL_SCHEDULES": "0"}) as stack:
        results = {
            "write_items_per_charge": write_items_per_charge(stack),
            "summary": summary_latency(stack),
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
