"""Usage metering on the local stack: aggregation, AWS calls per charge, and throughput.

Starts its own local stack (tests/support/stack.py, schedules off so the sweeper's queries
do not mix into the counts) and measures, through the Lambda Invoke API and the usage queue:

- events per account write for batches: the account item's version counts its writes
  (every ledger transaction bumps it once); goal >= 50 at batch size 100 (one user);
- DynamoDB calls per single charge, from GET /_local/stats (the bench's own reads use the
  stack's internal user agent and are not counted); goal: exactly one TransactWriteItems,
  and no SSM call once warm (settings and the pricing table are cached);
- the usage queue with single-event messages (one user): a batch of BatchSize such messages
  through the Invoke API takes ceil(BatchSize / 97) account writes (goal), which is what a
  flow fast enough to fill the event source's batches gets; and a steady flow of 1000
  messages sent to the queue, whose events per write the local stack's send rate bounds (a
  1 s batching window over LOCAL_POLLER_THREADS pollers takes about rate / 3 messages a
  batch here: measured, no goal);
- charges per second through the Invoke API (single-event invokes, concurrent clients), for
  distinct users and for one hot user, and events per second in batches of 100;
- the usage queue's batches at full size (issue 21): the messages of 500 events one
  invocation meters (MAX_QUEUE_EVENTS; the rest of a BatchSize batch is put back), and
  single 500-event messages over 1 and 50 users, against the time budget the function gives
  itself (its Timeout less billing.usage.intake's margin). A full batch (50 users per
  message) must fit (goal); the single messages show how the time grows with the
  transactions (one per user and chunk of up to 97 events; the worst case, one user per
  event, is handed back in part and comes again: the budget, not the batch size, bounds an
  invocation). These run on a stack of their own (fresh tables) with a copy of the template
  whose MeterUsageFunction Timeout is long, so the figures are the metering's, not a cut-
  off.

The embedded AWS is moto behind one lock, so absolute rates say little about DynamoDB; the
ratios (events per write, calls per charge) are what carries over. moto 5.2's
TransactWriteItems deep-copies the whole table of every item it writes (to roll back), so a
transaction costs O(items x table size) here and the rates fall as the tables grow; a
conflicting transaction (one hot user) costs as much as a successful one.

    .venv/bin/python bench/metering.py     (BENCH_ROUNDS=6, BENCH_CHARGES=100 by default)
Writes bench/results/metering.json.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]

import boto3  # noqa: E402
from billing.usage import intake, metering  # noqa: E402
from botocore.config import Config  # noqa: E402

from local.aws import INTERNAL_USER_AGENT  # noqa: E402
from local.template import Template  # noqa: E402
from tests.support.metering import template_with_meter_timeout  # noqa: E402
from tests.support.stack import ARTIFACTS, LocalStack, wait_for  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "6"))
CHARGES = int(os.environ.get("BENCH_CHARGES", "100"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "16"))
FUNCTION = "MeterUsageFunction"
RESULTS = ROOT / "bench" / "results" / "metering.json"


def internal(stack: LocalStack, service: str) -> Any:
    return stack.boto3_client(service, user_agent_extra=INTERNAL_USER_AGENT)


def calls(stack: LocalStack) -> Counter[str]:
    return Counter({k: v for k, v in stack.stats()["calls"].items() if v})


def funded_user(stack: LocalStack, quota: int) -> str:
    user = f"bench-{uuid.uuid4().hex[:12]}"
    stack.request("POST", "/account", token=stack.token(user), json={}).raise_for_status()
    stack.request(
        "POST",
        f"/admin/accounts/{user}/adjust",
        token=stack.token("bench-admin", admin=True),
        json={"delta": quota, "reason": "bench"},
    ).raise_for_status()
    return user


def charge(user: str) -> dict[str, Any]:
    # gpt-4o, 80 prompt tokens: 100 quota (settings/local.json)
    return {
        "action": "charge",
        "request_id": f"bench-{uuid.uuid4().hex}",
        "user_id": user,
        "model": "gpt-4o",
        "prompt_tokens": 80,
        "completion_tokens": 0,
    }


def version(stack: LocalStack, user: str) -> int:
    item = internal(stack, "dynamodb").get_item(
        TableName=stack.table_name("AccountsTable"),
        Key={"user_id": {"S": user}},
        ConsistentRead=True,
    )["Item"]
    return int(item["version"]["N"])


def request_count(stack: LocalStack, user: str) -> int:
    item = internal(stack, "dynamodb").get_item(
        TableName=stack.table_name("AccountsTable"),
        Key={"user_id": {"S": user}},
        ConsistentRead=True,
    )["Item"]
    return int(item["request_count"]["N"])


# ---------------------------------------------------------------- aggregation


def batch_aggregation(stack: LocalStack, size: int, users: int = 1) -> dict[str, Any]:
    """One invoke of `size` charges over `users` users: events per account write."""
    people = [funded_user(stack, 10**9) for _ in range(users)]
    before = {user: version(stack, user) for user in people}
    events = [charge(people[i % users]) for i in range(size)]
    stack.reset_stats()
    results = stack.invoke(FUNCTION, {"events": events})["results"]
    counted = calls(stack)
    assert all(r["status"] == "charged" for r in results), results[:3]
    writes = sum(version(stack, user) - before[user] for user in people)
    return {
        "batch_size": size,
        "users": users,
        "account_writes": writes,
        "events_per_account_write": round(size / writes, 2),
        "transact_write_items": counted["dynamodb.TransactWriteItems"],
        "dynamodb_calls": sum(v for k, v in counted.items() if k.startswith("dynamodb.")),
    }


def queue_aggregation(stack: LocalStack, messages: int = 1000) -> dict[str, Any]:
    """`messages` single-event messages of one user sent to the usage queue back to back
    (a steady flow, faster than the pollers take it): events per account write. Each
    invocation takes up to BatchSize messages (and 6 MB) within its batching window and
    meters one user's events in transactions of up to 97; a burst smaller than what the
    pollers (LOCAL_POLLER_THREADS, as Lambda's several pollers) take in one window is split
    between them, which the tests bound instead."""
    user = funded_user(stack, 10**9)
    before = version(stack, user)
    sqs = internal(stack, "sqs")
    url = stack.queue_url("UsageQueue")
    events = [charge(user) for _ in range(messages)]

    def send(start: int) -> None:
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "MessageBody": json.dumps(e)}
                for i, e in enumerate(events[start : start + 10])
            ],
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(send, range(0, messages, 10)))
    sent = time.perf_counter() - started
    wait_for(
        lambda: request_count(stack, user) == messages,
        timeout=300,
        message="the usage queue to be metered",
    )
    writes = version(stack, user) - before
    return {
        "messages": messages,
        "messages_per_second_sent": round(messages / sent, 1),
        "account_writes": writes,
        "events_per_account_write": round(messages / writes, 2),
    }


def single_event_batch(stack: LocalStack, batch_size: int) -> dict[str, Any]:
    """One batch as the usage queue's event source delivers it at BatchSize: `batch_size`
    single-event messages of one user, through the Invoke API. The account writes it takes
    (ceil(batch_size / 97) at best) are what a flow fast enough to fill a batch gets."""
    user = funded_user(stack, 10**9)
    before = version(stack, user)
    response = stack.invoke(FUNCTION, sqs_event(stack, [charge(user) for _ in range(batch_size)]))
    assert not response.get("batchItemFailures"), response
    writes = version(stack, user) - before
    return {
        "messages": batch_size,
        "account_writes": writes,
        "events_per_account_write": round(batch_size / writes, 2),
    }


# ---------------------------------------------------------------- calls per charge


def calls_per_charge(stack: LocalStack) -> dict[str, Any]:
    user = funded_user(stack, 10**9)
    rounds: list[Counter[str]] = []
    for _ in range(ROUNDS):
        stack.reset_stats()
        result = stack.invoke(FUNCTION, charge(user))
        assert result["status"] == "charged", result
        rounds.append(calls(stack))
    names = sorted({name for counted in rounds for name in counted})
    warm = {name: statistics.median(c[name] for c in rounds[1:]) for name in names}
    return {
        "first": dict(sorted(rounds[0].items())),
        "warm": warm,
        "warm_total": sum(warm.values()),
        "rounds": ROUNDS,
    }


# ---------------------------------------------------------------- throughput


def charges_per_second(stack: LocalStack, users: int) -> dict[str, Any]:
    people = [funded_user(stack, 10**9) for _ in range(users)]
    events = [charge(people[i % users]) for i in range(CHARGES)]
    # Warm every worker first, so the rate is not a cold-start figure.
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        list(pool.map(lambda u: stack.invoke(FUNCTION, charge(u)), people * 2))
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        results = list(pool.map(lambda e: stack.invoke(FUNCTION, e), events))
    elapsed = time.perf_counter() - started
    statuses = Counter(r["status"] for r in results)
    assert statuses == {"charged": CHARGES}, statuses
    return {
        "charges": CHARGES,
        "clients": CLIENTS,
        "users": users,
        "seconds": round(elapsed, 2),
        "charges_per_second": round(CHARGES / elapsed, 1),
    }


def batched_events_per_second(stack: LocalStack, batches: int = 5) -> dict[str, Any]:
    user = funded_user(stack, 10**9)
    payloads = [{"events": [charge(user) for _ in range(100)]} for _ in range(batches)]
    started = time.perf_counter()
    for payload in payloads:
        stack.invoke(FUNCTION, payload)
    elapsed = time.perf_counter() - started
    return {
        "events": 100 * batches,
        "batch_size": 100,
        "seconds": round(elapsed, 2),
        "events_per_second": round(100 * batches / elapsed, 1),
    }


# ---------------------------------------------------------------- full usage batches

EVENTS_PER_MESSAGE = 500
MEASURE_TIMEOUT = 900  # the bench stack's MeterUsageFunction Timeout: nothing is cut off


def sizing() -> dict[str, Any]:
    """BatchSize, Timeout and VisibilityTimeout as infra/template.yaml sets them, and the
    time budget the function gives itself from that Timeout."""
    template = Template(ROOT / "infra" / "template.yaml")
    props = template.function_properties(FUNCTION)
    source = props["Events"]["UsageQueueEvents"]["Properties"]
    queue = template.raw["Resources"]["UsageQueue"]["Properties"]
    timeout = int(props["Timeout"])
    margin_ms = intake.margin_ms(timeout * 1000)
    return {
        "batch_size": int(source["BatchSize"]),
        "max_queue_events": intake.MAX_QUEUE_EVENTS,
        "messages_per_invocation": min(
            int(source["BatchSize"]), intake.MAX_QUEUE_EVENTS // EVENTS_PER_MESSAGE
        ),
        "timeout_seconds": timeout,
        "budget_seconds": round(timeout - margin_ms / 1000, 1),
        "visibility_timeout_seconds": int(queue["VisibilityTimeout"]),
    }


def accounts(stack: LocalStack, count: int) -> list[str]:
    """`count` new accounts with no quota (settles need none: they may go below zero)."""
    users = [f"bench-{uuid.uuid4().hex[:12]}" for _ in range(count)]

    def create(user: str) -> None:
        # POST /account is idempotent (200 for an existing account): a creation that moto
        # stalled past the function's Timeout is simply sent again.
        for attempt in range(3):
            response = stack.request("POST", "/account", token=stack.token(user), json={})
            if response.status_code < 500 or attempt == 2:
                response.raise_for_status()
                return

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(create, users))
    return users


def settles(users: list[str]) -> dict[str, Any]:
    """One message body: 500 settles with no hold before them, spread over `users`."""
    events = [
        {**charge(users[i % len(users)]), "action": "settle"} for i in range(EVENTS_PER_MESSAGE)
    ]
    return {"events": events}


def sqs_event(stack: LocalStack, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    arn = f"arn:aws:sqs:us-east-1:123456789012:{stack.queue_url('UsageQueue').rsplit('/', 1)[1]}"
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": f"bench-{index}",
                "body": json.dumps(body),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": "us-east-1",
            }
            for index, body in enumerate(bodies)
        ]
    }


def metered_batch(stack: LocalStack, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """Invoke the function with these messages as one queue batch; seconds and hand-backs."""
    # A read timeout beyond the function's: the invocation may take minutes here.
    client = boto3.client(
        "lambda",
        endpoint_url=stack.base_url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=MEASURE_TIMEOUT + 60),
    )
    before = calls(stack)
    started = time.perf_counter()
    response = client.invoke(FunctionName=FUNCTION, Payload=json.dumps(sqs_event(stack, bodies)))
    elapsed = time.perf_counter() - started
    result = json.loads(response["Payload"].read())
    assert not response.get("FunctionError"), result
    transactions = (calls(stack) - before)["dynamodb.TransactWriteItems"]
    events = len(bodies) * EVENTS_PER_MESSAGE
    return {
        "messages": len(bodies),
        "events": events,
        "seconds": round(elapsed, 2),
        "events_per_second": round(events / elapsed, 1),
        "transactions": transactions,
        "seconds_per_transaction": round(elapsed / max(1, transactions), 3),
        "handed_back": len(result["batchItemFailures"]),
    }


def full_batches(stack: LocalStack, limits: dict[str, Any]) -> dict[str, Any]:
    single = {
        f"{users}_users": metered_batch(stack, [settles(accounts(stack, users))])
        for users in (1, 50)
    }
    # A full invocation: the messages of 500 events it meters (the rest of a batch of
    # BatchSize is put back on the queue), every one from another gateway, 50 users each.
    messages = limits["messages_per_invocation"]
    full = metered_batch(stack, [settles(accounts(stack, 50)) for _ in range(messages)])
    return {"single_message": single, "full_batch_50_users_per_message": full}


# ---------------------------------------------------------------- report


def line(name: str, value: Any, goal: str, met: bool | None) -> None:
    verdict = "" if met is None else ("  [met]" if met else "  [NOT MET]")
    print(f"{name:<48} {value!s:>12}   goal: {goal}{verdict}")


def main() -> int:
    limits = sizing()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    stack = LocalStack("bench-metering")
    stack.start(env={"LOCAL_SCHEDULES": "0"})
    try:
        per_charge = calls_per_charge(stack)
        batches = [batch_aggregation(stack, size) for size in (1, 10, 50, 100, 500)]
        spread = batch_aggregation(stack, 100, users=10)
        queue = queue_aggregation(stack)
        one_batch = single_event_batch(stack, limits["batch_size"])
        distinct = charges_per_second(stack, users=CLIENTS)
        hot = charges_per_second(stack, users=1)
        batched = batched_events_per_second(stack)
    finally:
        stack.stop()
    # Full batches on fresh tables (moto's transactions slow down as tables grow), with a
    # Timeout long enough that nothing is cut off.
    stack = LocalStack("bench-metering-batches")
    stack.start(
        template=template_with_meter_timeout(ARTIFACTS, MEASURE_TIMEOUT),
        env={"LOCAL_SCHEDULES": "0"},
    )
    try:
        sized = full_batches(stack, limits)
    finally:
        stack.stop()

    at_100 = next(b for b in batches if b["batch_size"] == 100)
    at_500 = next(b for b in batches if b["batch_size"] == 500)
    # As few transactions as the 100-item limit allows: each full one carries
    # MAX_RECORDS_PER_TRANSACTION events (the account and ledger entries take the rest).
    fewest = math.ceil(500 / metering.MAX_RECORDS_PER_TRANSACTION)
    fewest_queue = math.ceil(limits["batch_size"] / metering.MAX_RECORDS_PER_TRANSACTION)
    warm = per_charge["warm"]
    one_transaction = warm.get("dynamodb.TransactWriteItems") == 1
    cached = warm.get("ssm.GetParameter", 0) == 0
    goals = {
        "events_per_account_write_at_100": {
            "value": at_100["events_per_account_write"],
            "goal": ">= 50",
            "met": at_100["events_per_account_write"] >= 50,
        },
        "account_writes_at_500": {
            "value": at_500["account_writes"],
            "goal": f"== {fewest} (ceil(500 / {metering.MAX_RECORDS_PER_TRANSACTION}), "
            f"{metering.MAX_RECORDS_PER_TRANSACTION} events in each full write, goal >= 95)",
            "met": at_500["account_writes"] == fewest
            and metering.MAX_RECORDS_PER_TRANSACTION >= 95,
        },
        "account_writes_usage_queue_full_batch": {
            "value": one_batch["account_writes"],
            "goal": f"== {fewest_queue} (ceil({limits['batch_size']} / "
            f"{metering.MAX_RECORDS_PER_TRANSACTION}): a BatchSize of single-event messages)",
            "met": one_batch["account_writes"] == fewest_queue,
        },
        "transact_write_items_per_single_charge": {
            "value": warm.get("dynamodb.TransactWriteItems", 0),
            "goal": "== 1",
            "met": one_transaction,
        },
        "ssm_calls_per_warm_charge": {
            "value": warm.get("ssm.GetParameter", 0),
            "goal": "0 (settings and pricing cached)",
            "met": cached,
        },
        "full_usage_batch_seconds": {
            "value": sized["full_batch_50_users_per_message"]["seconds"],
            "goal": f"<= {limits['budget_seconds']} (the budget of Timeout "
            f"{limits['timeout_seconds']} s), nothing handed back",
            "met": sized["full_batch_50_users_per_message"]["seconds"] <= limits["budget_seconds"]
            and sized["full_batch_50_users_per_message"]["handed_back"] == 0,
        },
        "usage_queue_visibility_timeout": {
            "value": limits["visibility_timeout_seconds"],
            "goal": f">= Timeout {limits['timeout_seconds']} (AWS requires it)",
            "met": limits["visibility_timeout_seconds"] >= limits["timeout_seconds"],
        },
    }
    report = {
        "goals": goals,
        "calls_per_single_charge": per_charge,
        "batches_one_user": batches,
        "batch_of_100_over_10_users": spread,
        "usage_queue_steady_flow_one_user": queue,
        "usage_queue_full_batch_one_user": one_batch,
        "invoke_throughput_distinct_users": distinct,
        "invoke_throughput_one_user": hot,
        "batched_throughput": batched,
        "usage_queue_sizing": limits,
        "usage_queue_full_batches": sized,
        "note": (
            "moto behind one lock, and its TransactWriteItems deep-copies each written item's "
            "table: rates are not DynamoDB's and fall as tables grow; ratios carry over"
        ),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")

    print("usage metering on the local stack")
    for batch in batches:
        line(
            f"events per account write, batch of {batch['batch_size']}",
            batch["events_per_account_write"],
            ">= 50 at 100",
            (batch["events_per_account_write"] >= 50) if batch["batch_size"] == 100 else None,
        )
    line("events per account write, 100 over 10 users", spread["events_per_account_write"],
         "(10 at most: one write per user)", None)  # fmt: skip
    full_queue = goals["account_writes_usage_queue_full_batch"]
    line(f"account writes, usage queue batch ({limits['batch_size']} msgs)",
         full_queue["value"], full_queue["goal"], full_queue["met"])  # fmt: skip
    line("events per account write, usage queue steady flow", queue["events_per_account_write"],
         f"(measured: {queue['messages_per_second_sent']} msgs/s sent, window 1 s)",
         None)  # fmt: skip
    line("TransactWriteItems per single charge (warm)", goals[
        "transact_write_items_per_single_charge"]["value"], "== 1", one_transaction)  # fmt: skip
    line("DynamoDB + SSM calls per single charge (warm)", per_charge["warm_total"],
         "one read + one transaction", None)  # fmt: skip
    line("SSM calls per warm charge", goals["ssm_calls_per_warm_charge"]["value"],
         "0 (pricing cached)", cached)  # fmt: skip
    line("charges/second, Invoke API, distinct users", distinct["charges_per_second"],
         "(measured)", None)  # fmt: skip
    line("charges/second, Invoke API, one hot user", hot["charges_per_second"],
         "(measured)", None)  # fmt: skip
    line("events/second, batches of 100", batched["events_per_second"], "(measured)", None)
    for name, measured in sized["single_message"].items():
        line(f"seconds, one 500-event message, {name.replace('_', ' ')}", measured["seconds"],
             f"(measured; {measured['transactions']} transactions)", None)  # fmt: skip
    full = goals["full_usage_batch_seconds"]
    at_bound = goals["account_writes_at_500"]
    line("account writes, batch of 500 (one user)", at_500["account_writes"],
         str(at_bound["goal"]), bool(at_bound["met"]))  # fmt: skip
    messages = limits["messages_per_invocation"]
    line(f"seconds, full invocation ({messages} x 500 events)", full["value"],
         str(full["goal"]), bool(full["met"]))  # fmt: skip
    print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0 if all(goal["met"] for goal in goals.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
