"""Spend limits on the local stack: what a limited charge costs, and batches.

- DynamoDB calls and write items per charge with 0, 1 (a key limit) and 2 (account and key)
  limits in force, from the metering function's own calls (GET /_local/iam counts each item
  of a transaction as its action). Goal: still one transaction, +1 item per limit in force
  (the limits are read with the account, no extra read).
- A batch of 500 charges of one user under a key limit that covers them all: events per
  account write (one counter update per scope per chunk of up to 96 records).

    .venv/bin/python bench/limits.py        (BENCH_CHARGES=20 by default)
Writes bench/results/limits.json.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]

from tests.support.stack import LocalStack  # noqa: E402

CHARGES = int(os.environ.get("BENCH_CHARGES", "20"))
RESULTS = ROOT / "bench" / "results" / "limits.json"


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


def put_limit(stack: LocalStack, user: str, scope: str) -> None:
    stack.request(
        "PUT",
        f"/limits/{scope}",
        token=stack.token(user),
        json={"max_quota": 10**15, "period": "day"},
    ).raise_for_status()


def meter_actions(stack: LocalStack) -> Counter[str]:
    report = stack.iam()["functions"]["MeterUsageFunction"]["allowed"]
    return Counter({k: int(v) for k, v in report.items()})


def charge(user: str) -> dict[str, Any]:
    return {
        "action": "charge",
        "request_id": f"bench-{uuid.uuid4().hex}",
        "user_id": user,
        "model": "gpt-4o",
        "prompt_tokens": 80,
        "completion_tokens": 0,
        "key_id": "bench-key",
    }


def per_charge(stack: LocalStack, scopes: list[str]) -> dict[str, Any]:
    user = funded_user(stack)
    for scope in scopes:
        put_limit(stack, user, scope)
    before = meter_actions(stack)
    for _ in range(CHARGES):
        result = stack.invoke("MeterUsageFunction", charge(user))
        assert result["status"] == "charged", result
    used = meter_actions(stack) - before
    per = {k: round(v / CHARGES, 2) for k, v in sorted(used.items())}
    writes = sum(v for k, v in per.items() if k.endswith(("PutItem", "UpdateItem")))
    return {"limits": scopes, "calls_per_charge": per, "write_items_per_charge": writes}


def batch(stack: LocalStack, events: int = 500) -> dict[str, Any]:
    user = funded_user(stack)
    put_limit(stack, user, "key:bench-key")
    before = meter_actions(stack)
    results = stack.invoke("MeterUsageFunction", {"events": [charge(user) for _ in range(events)]})
    assert {r["status"] for r in results["results"]} == {"charged"}
    used = meter_actions(stack) - before
    # The report counts actions, not tables: each chunk is one transaction with one ledger
    # entry (PutItem beyond the records), one account update and one counter update.
    chunks = used["dynamodb:PutItem"] - events
    return {
        "events": events,
        "transactions": chunks,
        "counter_updates": used["dynamodb:UpdateItem"] - chunks,
        "events_per_account_write": round(events / max(1, chunks), 1),
        "calls": dict(sorted(used.items())),
    }


def main() -> int:
    with LocalStack("bench-limits").start(env={"LOCAL_SCHEDULES": "0"}) as stack:
        results = {
            "per_charge": [
                per_charge(stack, []),
                per_charge(stack, ["key:bench-key"]),
                per_charge(stack, ["account", "key:bench-key"]),
            ],
            "batch": batch(stack),
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
