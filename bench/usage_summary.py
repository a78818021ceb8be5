"""Usage insight on the local stack: what a charge writes, and GET /usage/summary latency.

- Write items per charge, from the metering function's own calls (GET /_local/iam counts
  each item of a transaction as its action): the rollups add nothing to the charge's
  transaction (account update + ledger entry + usage record = 3 items), and the rollup's
  own writes are UsageRollupFunction's, off the charge path.
- Summary latency for a user with up to 100k usage records over 92 days (4 models x 5 keys),
  made through the public path: the Invoke API in batches of 500 events, the billing clock
  moved a day at a time (POST /_local/clock), the rollups derived by the usage table's stream
  (UsageRollupFunction) as in production (the hourly reconciliation left out: it would
  walk the growing tables once a simulated day). The local stack meters a few hundred events a
  second, so the count is what fits in BENCH_SEED_SECONDS (default 420 s; the rate of the
  first batch decides it) up to BENCH_RECORDS (default 100000); the figure states the count.
  p50/p95 of GET /usage/summary over 30 and 92 days by day, model and key.
- Freshness: time from a charge's answer until GET /usage/summary (today) counts it, p50/p95
  over BENCH_FRESH charges (default 20), on that same user.

    .venv/bin/python bench/usage_summary.py        (BENCH_ROUNDS=20 by default)
Writes bench/results/usage_summary.json.

Finding: a 92-day summary (1840 rollup items) takes 0.6-0.8 s on this local stack (one Query;
moto deep-copies and sizes each item, PynamoDB builds a model per item), not the 15 s of the
first run: that run's embedded DynamoDB still walked whole tables per Query (fixed since in
local/fast_dynamodb.py). In AWS such a Query is a few 1 MB pages (tens of ms).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]

from tests.support.metering import template_without_schedules  # noqa: E402
from tests.support.stack import LocalStack, wait_for  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))
RECORDS = int(os.environ.get("BENCH_RECORDS", "100000"))
SEED_SECONDS = float(os.environ.get("BENCH_SEED_SECONDS", "420"))
CATCH_UP_SECONDS = float(os.environ.get("BENCH_CATCH_UP_SECONDS", "900"))
FRESH = int(os.environ.get("BENCH_FRESH", "20"))
BATCH = 500  # events per Invoke: the most a batch holds
DAYS = 92  # the longest range a summary takes
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "dall-e-3")
KEYS = ("key-a", "key-b", "key-c", "key-d", None)
RESULTS = ROOT / "bench" / "results" / "usage_summary.json"


def funded_user(stack: LocalStack) -> str:
    user = f"bench-{uuid.uuid4().hex[:12]}"
    stack.request("POST", "/account", token=stack.token(user), json={}).raise_for_status()
    stack.request(
        "POST",
        f"/admin/accounts/{user}/adjust",
        token=stack.token("bench-admin", admin=True),
        json={"delta": 10**15, "reason": "bench"},
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


def _event(user: str, n: int) -> dict[str, Any]:
    event: dict[str, Any] = {
        "action": "charge",
        "request_id": f"bench-{uuid.uuid4().hex}",
        "user_id": user,
        "model": MODELS[n % len(MODELS)],
        "prompt_tokens": 200 + n % 700,
        "completion_tokens": 50 + n % 200,
    }
    key = KEYS[(n // len(MODELS)) % len(KEYS)]
    if key is not None:
        event["key_id"] = key
    return event


def _send(stack: LocalStack, user: str, count: int, offset: int) -> None:
    events = [_event(user, offset + n) for n in range(count)]
    results = stack.invoke("MeterUsageFunction", {"events": events})["results"]
    charged = sum(1 for r in results if r["status"] == "charged")
    assert charged == count, [r for r in results if r["status"] != "charged"][:3]


def total_requests(stack: LocalStack, token: str, span: dict[str, str]) -> int:
    response = stack.request("GET", "/usage/summary", token=token, params=span, timeout=60)
    response.raise_for_status()
    return int(response.json()["total"]["requests"])


def seed_usage(stack: LocalStack, user: str) -> dict[str, Any]:
    """Usage records through the Invoke API over DAYS billing days, as many as the budget
    allows; then wait until the stream has rolled them all up."""
    started = time.perf_counter()
    _send(stack, user, BATCH, 0)  # warms the function
    warm = time.perf_counter()
    _send(stack, user, BATCH, BATCH)
    rate = BATCH / (time.perf_counter() - warm)
    planned = min(RECORDS, max(4 * BATCH, int(rate * SEED_SECONDS)))
    per_day = [planned // DAYS + (1 if d < planned % DAYS else 0) for d in range(DAYS)]
    per_day[0] -= 2 * BATCH  # the calibration batches (day 0 holds more)
    first_day = stack.billing_now().date()
    sent = 2 * BATCH
    for day, count in enumerate(per_day):
        if day:
            stack.advance_clock(86400)
        while count > 0:
            size = min(BATCH, count)
            _send(stack, user, size, sent)
            sent, count = sent + size, count - size
    seed_seconds = time.perf_counter() - started
    token = stack.token(user)
    span = {"from": first_day.isoformat(), "to": stack.billing_now().date().isoformat()}
    waited = time.perf_counter()
    wait_for(
        lambda: total_requests(stack, token, span) >= sent,
        timeout=CATCH_UP_SECONDS,
        interval=2.0,
        message="the rollups of every usage record",
    )
    return {
        "usage_records": sent,
        "days": DAYS,
        "batch_size": BATCH,
        "seed_seconds": round(seed_seconds, 1),
        "events_per_second": round(sent / seed_seconds, 1),
        "rollups_caught_up_seconds_after_seeding": round(time.perf_counter() - waited, 1),
    }


def summary_latency(stack: LocalStack, user: str, records: int) -> dict[str, Any]:
    today = stack.billing_now().date()
    token = stack.token(user)
    cases = {}
    for days in (30, DAYS):
        span = {"from": (today - timedelta(days=days - 1)).isoformat(), "to": today.isoformat()}
        for group_by in ("day", "model", "key"):
            timings = []
            answer: dict[str, Any] = {}
            for _ in range(ROUNDS):
                started = time.perf_counter()
                response = stack.request(
                    "GET",
                    "/usage/summary",
                    token=token,
                    params={**span, "group_by": group_by},
                    timeout=60,
                )
                timings.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
                answer = response.json()
            if days == DAYS:
                assert answer["total"]["requests"] == records, answer["total"]
            timings.sort()
            cases[f"{days}d_{group_by}"] = {
                "p50_ms": round(statistics.median(timings), 1),
                "p95_ms": round(timings[max(0, math.ceil(len(timings) * 0.95) - 1)], 1),
                "buckets": len(answer["buckets"]),
            }
    return {"usage_records": records, "rounds": ROUNDS, "cases": cases}


def freshness(stack: LocalStack, user: str) -> dict[str, Any]:
    """Seconds from a charge's answer until the summary of today counts it."""
    token = stack.token(user)
    today = stack.billing_now().date().isoformat()
    span = {"from": today, "to": today}
    seen = total_requests(stack, token, span)
    delays = []
    for n in range(FRESH):
        result = stack.invoke("MeterUsageFunction", _event(user, n))
        answered = time.perf_counter()
        assert result["status"] == "charged", result
        seen += 1

        def counted(wanted: int = seen) -> bool:
            return total_requests(stack, token, span) >= wanted

        wait_for(
            counted,
            timeout=60,
            interval=0.05,
            message="the charge in the summary",
        )
        delays.append(time.perf_counter() - answered)
    delays.sort()
    return {
        "charges": FRESH,
        "p50_seconds": round(statistics.median(delays), 2),
        "p95_seconds": round(delays[max(0, math.ceil(len(delays) * 0.95) - 1)], 2),
        "max_seconds": round(delays[-1], 2),
        "poll_interval_seconds": 0.05,
    }


def main() -> int:
    # Without the hourly reconciliation: each simulated day (POST /_local/clock) would run it
    # once over a usage table growing to 100k records (30-40 s a day here), which is not what
    # this measures. The other schedules run as in production.
    with tempfile.TemporaryDirectory() as directory:
        template = template_without_schedules(Path(directory), "ReconcileFunction")
        return measure(template)


def measure(template: Path) -> int:
    stack = LocalStack("bench-usage-summary")
    with stack.start(template=template, env={"LOCAL_SCHEDULES": "0"}):
        written = write_items_per_charge(stack)
        user = funded_user(stack)
        seeded = seed_usage(stack, user)
        results = {
            "write_items_per_charge": written,
            "seeding": seeded,
            "summary": summary_latency(stack, user, seeded["usage_records"]),
            "freshness": freshness(stack, user),
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
