"""The usage queue under real batch sizes and failures (issues 21 and 13).

- A full batch (the messages of 500 events one invocation meters) on a stack whose
  MeterUsageFunction has a few seconds only: the function meters within its time budget,
  hands back the messages it did not finish, and, delivered again (through the Invoke API by
  hand, and through the queue by the poller), everything ends billed exactly once.
- A batch of more events than one invocation meters (MAX_QUEUE_EVENTS, small on a stack of
  its own) puts the rest back on the queue, where they are metered once, none handed back;
  single-event messages are metered many to an account write (the event source's batch).
- Messages that cannot be read go to the usage DLQ (tests/integration/test_metering.py
  covers the kinds through the poller): here through the Invoke API with the sample event,
  and when the DLQ does not take them, the message is handed back, never deleted.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from billing.usage import intake

from local.template import Template
from tests.support.metering import (
    FUNCTION,
    ROOT,
    account_item,
    assert_ledger_sums,
    collect_dead_letters,
    create_account,
    get_account,
    invoke,
    new_user,
    queue_depth,
    sample,
    send,
    take_dead_letters,
    template_with_meter_timeout,
    usage_event,
    usage_record,
)
from tests.support.reconcile import assert_reconciled
from tests.support.stack import LambdaFunctionError, LocalStack, wait_for

EVENTS_PER_MESSAGE = 500
PRICE = 100  # a settle of 80 gpt-4o prompt tokens
# Seconds: a budget of 8 s, under half of what a full batch (250 users) takes even on a fast
# machine (17 s in bench/metering.py on fresh tables; a budget of 16 s let it fit there).
SHORT_TIMEOUT = 10
# A full batch needs many deliveries within so short a Timeout (the template sizes Timeout so
# that it needs one); the redrive count grows with them, or the queue would dead-letter it.
MAX_RECEIVES = 100
# Handed-back messages come back after the usage queue's VisibilityTimeout (1800 s in the
# template, for its 300 s Timeout; 18 s in the stack's fast mode): on this stack it is the
# shortest AWS allows for its Timeout, SHORT_TIMEOUT, so the rounds of a full batch follow
# each other as they would in AWS with that Timeout.
# Metering a full batch on moto (one lock, transactions that copy their tables) takes
# minutes on a busy machine: more than the suite's per-test timeout.
FULL_BATCH_TIMEOUT = 900


def batch_size() -> int:
    template = Template(ROOT / "infra" / "template.yaml")
    source = template.function_properties(FUNCTION)["Events"]["UsageQueueEvents"]
    return int(source["Properties"]["BatchSize"])


def full_messages() -> int:
    """The 500-event messages one invocation meters (the rest of a batch is put back)."""
    count = intake.MAX_QUEUE_EVENTS // EVENTS_PER_MESSAGE
    assert batch_size() >= count  # the event source delivers that many at once
    return count


@pytest.fixture(scope="module")
def short_timeout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack of its own whose metering function has SHORT_TIMEOUT seconds (and whose usage
    queue redrives after MAX_RECEIVES receives, and makes messages visible again after
    SHORT_TIMEOUT seconds)."""
    template = template_with_meter_timeout(
        tmp_path_factory.mktemp("template"), SHORT_TIMEOUT, MAX_RECEIVES, SHORT_TIMEOUT
    )
    local = LocalStack("metering-budget")
    local.start(template=template, env={"LOCAL_SCHEDULES": "0"})
    try:
        yield local
        assert_reconciled(local)
    finally:
        local.stop()


def full_batch(stack: LocalStack, users: int = 50) -> tuple[list[str], list[dict[str, Any]]]:
    """A full batch of messages, each from a gateway of its own: settles (no hold, no quota
    needed) over `users` accounts per message; and all the accounts."""
    people: list[str] = []
    messages = []
    for _ in range(full_messages()):
        own = [new_user() for _ in range(users)]
        for user in own:
            create_account(stack, user)
        people += own
        events = [usage_event(own[i % users], "settle") for i in range(EVENTS_PER_MESSAGE)]
        messages.append({"events": events})
    return people, messages


def sqs_event(stack: LocalStack, bodies: dict[str, Any], receive_count: int) -> dict[str, Any]:
    """The event the usage queue's event source sends for these messages (id -> body)."""
    template = sample("meter_usage_sqs.json")["Records"][0]
    arn = (
        template["eventSourceARN"].rsplit(":", 1)[0]
        + ":"
        + stack.queue_url("UsageQueue").rsplit("/", 1)[1]
    )
    return {
        "Records": [
            {
                **template,
                "messageId": message_id,
                "body": json.dumps(body),
                "attributes": {
                    **template["attributes"],
                    "ApproximateReceiveCount": str(receive_count),
                },
                "eventSourceARN": arn,
            }
            for message_id, body in bodies.items()
        ]
    }


def assert_billed_once(
    stack: LocalStack, people: list[str], messages: list[dict[str, Any]]
) -> None:
    per_user = len(messages) * EVENTS_PER_MESSAGE // len(people)
    for user in people:
        account = assert_ledger_sums(stack, user)
        assert account["request_count"] == per_user, (user, account)
        assert (account["quota"], account["used_quota"]) == (-per_user * PRICE, per_user * PRICE)
    for message in messages:
        for event in message["events"][:: EVENTS_PER_MESSAGE // 5]:
            record = usage_record(stack, event["request_id"])
            assert record is not None and record["status"] == "settled"


def deliver(stack: LocalStack, pending: dict[str, Any], receive_count: int) -> set[str] | None:
    """One delivery of these messages as the event source makes it: the ids handed back, or
    None when the function timed out (then Lambda's event source has all of them back)."""
    try:
        response = invoke(stack, sqs_event(stack, pending, receive_count))
    except LambdaFunctionError as exc:
        # On this shared machine a single moto transaction can stall for longer than the
        # margin; a timed-out batch comes back whole, and what it wrote is a duplicate.
        assert "Task timed out" in str(exc), exc
        return None
    handed_back = {failure["itemIdentifier"] for failure in response["batchItemFailures"]}
    assert handed_back <= set(pending)
    return handed_back


@pytest.mark.timeout(FULL_BATCH_TIMEOUT)
def test_a_full_batch_hands_back_what_did_not_fit_and_is_billed_once(
    short_timeout: LocalStack,
) -> None:
    stack = short_timeout
    people, messages = full_batch(stack)
    pending = {str(uuid.uuid4()): body for body in messages}
    answered: list[int] = []  # messages handed back by each delivery that returned
    for receive_count in range(1, 60):
        handed_back = deliver(stack, pending, receive_count)
        if handed_back is None:
            continue
        answered.append(len(handed_back))
        pending = {message_id: pending[message_id] for message_id in handed_back}
        if not pending:
            break
    assert not pending, answered
    # The budget (seconds) cut deliveries short: they returned in time, handing back the
    # rest, rather than being killed by the Timeout; the last one finished the batch.
    assert any(count > 0 for count in answered) and answered[-1] == 0, answered
    assert_billed_once(stack, people, messages)


@pytest.mark.timeout(FULL_BATCH_TIMEOUT)
def test_a_full_batch_through_the_queue_is_billed_once(short_timeout: LocalStack) -> None:
    stack = short_timeout
    people, messages = full_batch(stack)
    before = stack.stats()["pollers"]
    send(stack, messages)
    per_user = len(messages) * EVENTS_PER_MESSAGE // len(people)
    wait_for(
        lambda: (
            queue_depth(stack, "UsageQueue") == 0
            and all(get_account(stack, user)["request_count"] == per_user for user in people)
        ),
        timeout=600,
        interval=2,
        message="the full batch to be metered through the queue",
    )
    assert_billed_once(stack, people, messages)
    failed = sum(p["failed"] for p in stack.stats()["pollers"].values()) - sum(
        p["failed"] for p in before.values()
    )
    assert failed > 0, "nothing was handed back: the batch fitted the budget after all"
    for user in people:
        assert take_dead_letters(stack, user) == []


# ---------------------------------------------------------------- batches beyond the cap

CAP = 20


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack of its own whose metering function meters CAP events per queue invocation."""
    template = template_with_meter_timeout(
        tmp_path_factory.mktemp("capped"), 300, max_queue_events=CAP
    )
    local = LocalStack("metering-capped")
    local.start(template=template, env={"LOCAL_SCHEDULES": "0"})
    try:
        yield local
        assert_reconciled(local)
    finally:
        local.stop()


def test_messages_beyond_the_cap_go_back_on_the_queue_and_are_metered_once(
    capped: LocalStack,
) -> None:
    stack = capped
    user = new_user()
    create_account(stack, user)
    bodies = {
        str(uuid.uuid4()): {"events": [usage_event(user, "settle") for _ in range(10)]}
        for _ in range(5)
    }
    response = invoke(stack, sqs_event(stack, bodies, 1))
    assert response["batchItemFailures"] == []  # nothing waits out a visibility timeout
    # The invoke itself metered the first two messages (CAP events); the poller may already
    # be metering the three it put back, so only a lower bound holds for the account here.
    for body in list(bodies.values())[:2]:
        for event in body["events"]:
            record = usage_record(stack, event["request_id"])
            assert record is not None and record["status"] == "settled"
    assert get_account(stack, user)["request_count"] >= CAP
    wait_for(
        lambda: (
            get_account(stack, user)["request_count"] == 50
            and queue_depth(stack, "UsageQueue") == 0
        ),
        timeout=120,
        message="the messages put back to be metered",
    )
    account = assert_ledger_sums(stack, user)
    assert (account["quota"], account["used_quota"]) == (-50 * PRICE, 50 * PRICE)
    for body in bodies.values():
        for event in body["events"]:
            record = usage_record(stack, event["request_id"])
            assert record is not None and record["status"] == "settled"
    assert take_dead_letters(stack, user) == []


def test_messages_the_queue_does_not_take_back_are_handed_back(capped: LocalStack) -> None:
    stack = capped
    user = new_user()
    create_account(stack, user)
    bodies = {
        str(uuid.uuid4()): {"events": [usage_event(user, "settle") for _ in range(10)]}
        for _ in range(3)
    }
    stack.fault(
        service="sqs",
        operation="SendMessageBatch",
        error_code="ServiceUnavailable",
        contains="UsageQueue",
        count=-1,
    )
    try:
        response = invoke(stack, sqs_event(stack, bodies, 1))
    finally:
        stack.clear_faults()
    last = list(bodies)[2]
    assert response["batchItemFailures"] == [{"itemIdentifier": last}]  # never dropped
    assert get_account(stack, user)["request_count"] == CAP
    assert invoke(stack, sqs_event(stack, {last: bodies[last]}, 2))["batchItemFailures"] == []
    assert assert_ledger_sums(stack, user)["request_count"] == 30


def test_single_event_messages_are_metered_many_to_an_account_write(stack: LocalStack) -> None:
    """100 messages of one event each: the event source's batch (up to BatchSize within its
    window) meters them in a few transactions of the account, not one per message."""
    user = new_user()
    create_account(stack, user)
    version = int(account_item(stack, user)["version"])
    sqs, url = stack.boto3_client("sqs"), stack.queue_url("UsageQueue")
    events = [usage_event(user, "settle") for _ in range(100)]
    for start in range(0, len(events), 10):  # as fast as producers send
        entries = [
            {"Id": str(n), "MessageBody": json.dumps(event)}
            for n, event in enumerate(events[start : start + 10])
        ]
        assert not sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")
    wait_for(
        lambda: get_account(stack, user)["request_count"] == 100,
        timeout=120,
        message="the single-event messages to be metered",
    )
    writes = int(account_item(stack, user)["version"]) - version
    assert writes <= 10, writes  # at least 10 events an account write (BatchSize 5 gave <= 5)
    assert_ledger_sums(stack, user)


# ---------------------------------------------------------------- unreadable messages


def test_the_sample_event_with_unreadable_messages_sends_them_to_the_dlq(
    stack: LocalStack,
) -> None:
    marker = uuid.uuid4().hex
    event = sample("meter_usage_sqs_unreadable.json")
    for record in event["Records"]:
        record["messageId"] = f"{record['messageId']}-{marker}"
        record["body"] = record["body"].replace("MARKER", marker)
    assert invoke(stack, event) == {"batchItemFailures": []}
    dead = collect_dead_letters(stack, marker, len(event["Records"]))
    assert sorted(d["reason"] for d in dead) == sorted(
        ["not_json", "not_an_object", "invalid_batch", "invalid_event"]
    )
    sources = {r["messageId"] for r in event["Records"]}
    assert {d["source"] for d in dead} == sources
    by_reason = {d["reason"]: d["body"] for d in dead}
    bodies = {r["body"] for r in event["Records"]}
    assert {by_reason[r] for r in ("not_json", "not_an_object", "invalid_batch")} <= bodies


def test_when_the_dlq_does_not_take_a_message_it_is_handed_back(stack: LocalStack) -> None:
    marker = uuid.uuid4().hex
    body = f"not json {marker}"
    sqs_record = sample("meter_usage_sqs.json")["Records"][0]
    event = {"Records": [{**sqs_record, "messageId": marker, "body": body}]}
    stack.fault(
        service="sqs",
        operation="SendMessage",
        error_code="ServiceUnavailable",
        contains="UsageDLQ",
        count=-1,
    )
    try:
        assert invoke(stack, event) == {"batchItemFailures": [{"itemIdentifier": marker}]}
    finally:
        stack.clear_faults()
    assert take_dead_letters(stack, marker) == []
    # Once the DLQ takes it again, the redelivered message goes there.
    assert invoke(stack, event) == {"batchItemFailures": []}
    (dead,) = collect_dead_letters(stack, marker, 1)
    assert (dead["body"], dead["reason"], dead["source"]) == (body, "not_json", marker)


def test_an_invalid_event_beside_good_ones_alone_goes_to_the_dlq(stack: LocalStack) -> None:
    user = new_user()
    create_account(stack, user)
    good = usage_event(user, "settle")
    bad = {**usage_event(user), "prompt_tokens": "80"}
    sqs_record = sample("meter_usage_sqs.json")["Records"][0]
    event = {
        "Records": [{**sqs_record, "messageId": user, "body": json.dumps({"events": [good, bad]})}]
    }
    assert invoke(stack, event) == {"batchItemFailures": []}
    (dead,) = collect_dead_letters(stack, user, 1)
    assert dead["reason"] == "invalid_event" and json.loads(dead["body"]) == {"events": [bad]}
    assert get_account(stack, user)["request_count"] == 1
    assert usage_record(stack, bad["request_id"]) is None
