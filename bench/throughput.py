"""Local end-to-end throughput on a fresh local stack (python -m local):

- top-ups/second: N orders placed and paid through the Stripe sandbox by concurrent users;
  the clock runs from the first checkout to the last order credited (signed webhook → credit
  FIFO queue → credit function → ledger);
- charges/second: single `charge` events through the Lambda Invoke API by concurrent meters
  (one user each), and events/second in batches of 100.

Everything runs on this machine (workers, moto behind one lock, the sandbox): the figures
compare runs of this code on this machine, not AWS. Goals are for this machine's local stack.

    .venv/bin/python bench/throughput.py      (BENCH_TOPUPS, BENCH_CHARGES, BENCH_THREADS)
Writes bench/results/throughput.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]

from tests.support.api import UNIT, Api, User, drain, pay  # noqa: E402
from tests.support.stack import LocalStack, wait_for  # noqa: E402

TOPUPS = int(os.environ.get("BENCH_TOPUPS", "40"))
CHARGES = int(os.environ.get("BENCH_CHARGES", "200"))
THREADS = int(os.environ.get("BENCH_THREADS", "8"))
OUT = ROOT / "bench" / "results" / "throughput.json"
# Floors for this 2-CPU machine's local stack (regressions show as a miss), not AWS targets.
GOALS = {"topups_per_second": 1.0, "charges_per_second": 5.0, "batched_events_per_second": 30.0}


def warm(api: Api, users: list[User]) -> None:
    """One of each call first, so cold starts are not timed."""
    order = users[0].checkout("stripe", 1)
    pay(api, order["order_id"])
    api.meter(
        {
            "action": "charge",
            "request_id": uuid.uuid4().hex,
            "user_id": users[0].user_id,
            "model": "gpt-4o-mini",
            "prompt_tokens": 10,
            "completion_tokens": 10,
        }
    )
    drain(api.stack)


def topups(api: Api, users: list[User]) -> dict[str, Any]:
    def one(index: int) -> str:
        user = users[index % len(users)]
        order = user.checkout("stripe", 1 + index % 20)
        result = pay(api, order["order_id"])
        assert result["webhook_status"] == 200, result
        return str(order["order_id"])

    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as threads:
        order_ids = list(threads.map(one, range(TOPUPS)))
    client = api.stack.boto3_client("dynamodb")
    table = api.stack.table_name("OrdersTable")

    def all_paid() -> bool:
        return all(
            client.get_item(TableName=table, Key={"order_id": {"S": o}}, ConsistentRead=True)[
                "Item"
            ]["status"]["S"]
            == "paid"
            for o in order_ids
        )

    wait_for(all_paid, timeout=600, interval=0.2, message="every order to be credited")
    seconds = time.perf_counter() - started
    return {
        "topups": TOPUPS,
        "threads": THREADS,
        "seconds": round(seconds, 2),
        "topups_per_second": round(TOPUPS / seconds, 2),
    }


def charges(api: Api, users: list[User]) -> dict[str, Any]:
    def one(index: int) -> None:
        result = api.meter(
            {
                "action": "charge",
                "request_id": uuid.uuid4().hex,
                "user_id": users[index % len(users)].user_id,
                "model": "gpt-4o-mini",
                "prompt_tokens": 100,
                "completion_tokens": 50,
            }
        )
        assert result["status"] == "charged", result

    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as threads:
        list(threads.map(one, range(CHARGES)))
    seconds = time.perf_counter() - started

    batches = max(1, CHARGES // 100)

    def batch(index: int) -> None:
        user = users[index % len(users)].user_id
        events = [
            {
                "action": "charge",
                "request_id": uuid.uuid4().hex,
                "user_id": user,
                "model": "gpt-4o-mini",
                "prompt_tokens": 100,
                "completion_tokens": 50,
            }
            for _ in range(100)
        ]
        results = api.meter({"events": events})["results"]
        assert {r["status"] for r in results} == {"charged"}

    started_batches = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as threads:
        list(threads.map(batch, range(batches)))
    batch_seconds = time.perf_counter() - started_batches
    return {
        "charges": CHARGES,
        "threads": THREADS,
        "users": len(users),
        "seconds": round(seconds, 2),
        "charges_per_second": round(CHARGES / seconds, 2),
        "batched_events": batches * 100,
        "batch_seconds": round(batch_seconds, 2),
        "batched_events_per_second": round(batches * 100 / batch_seconds, 2),
    }


def main() -> dict[str, Any]:
    with LocalStack("bench-throughput") as stack:
        stack.start()
        api = Api(stack)
        users = [api.new_user(prefix="bench") for _ in range(THREADS)]
        admin = api.admin_token()
        for user in users:
            response = api.call(
                "POST",
                f"/admin/accounts/{user.user_id}/adjust",
                admin,
                json={"delta": 1000 * UNIT, "reason": "bench"},
            )
            assert response.status_code == 200, response.text
        warm(api, users)
        result = {
            "topups": topups(api, users),
            "charges": charges(api, users),
            "cpus": os.cpu_count(),
            "goals": GOALS,
            "note": "local stack on this machine (moto behind one lock, workers, sandbox "
            "all share its CPUs); not AWS figures",
        }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
