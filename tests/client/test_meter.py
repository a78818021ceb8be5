"""The meter client (`quota_meter.Meter`) against the local stack's Invoke API and usage queue.

Prices come from settings/local.json through API.md's formula (helpers.price): gpt-4o has
model ratio 1.25 and completion ratio 4, so 80 prompt tokens cost 100 quota.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.config import Config
from quota_meter import Meter, MeterError, Rejected, RetryPolicy, new_request_id

from tests.client.helpers import (
    account,
    funded_user,
    lossy_invoke_api,
    meter_invocations,
    price,
    usage_entries,
    usage_record,
    wait_until,
)
from tests.support.stack import LocalStack

USAGE = {"model": "gpt-4o", "prompt_tokens": 80, "completion_tokens": 0}  # 100 quota


# ---------------------------------------------------------------- single events


def test_a_charge_debits_its_price_once(client_stack: LocalStack, meter: Meter) -> None:
    user = funded_user(client_stack, 10_000)
    result = meter.charge(user_id=user, model="gpt-4o", prompt_tokens=1200, completion_tokens=300)
    assert (result.status, result.quota, result.balance) == ("charged", 3000, 7000)
    assert price("gpt-4o", 1200, 300) == 3000
    assert result.error is None and result.ok and result.attempts == 1
    assert len(result.request_id) == 36  # a uuid4, made by the client
    assert account(client_stack, user)["quota"] == 7000
    entries = usage_entries(client_stack, user)
    assert [(e["id"], e["delta"]) for e in entries] == [(f"usage#{result.request_id}", -3000)]


def test_a_duplicate_request_id_returns_duplicate(client_stack: LocalStack, meter: Meter) -> None:
    user = funded_user(client_stack, 1000)
    request_id = new_request_id()
    first = meter.charge(request_id=request_id, user_id=user, **USAGE)
    again = meter.charge(request_id=request_id, user_id=user, **USAGE)
    assert (first.status, first.balance) == ("charged", 900)
    assert (again.status, again.first_status, again.quota, again.balance) == (
        "duplicate",
        "charged",
        100,
        900,
    )
    assert account(client_stack, user)["quota"] == 900
    assert len(usage_entries(client_stack, user)) == 1


def test_twenty_parallel_charges_of_one_request_id_apply_once(
    client_stack: LocalStack, meter: Meter
) -> None:
    user = funded_user(client_stack, 1000)
    request_id = new_request_id()
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(
            pool.map(
                lambda _: meter.charge(request_id=request_id, user_id=user, **USAGE), range(20)
            )
        )
    assert sorted(r.status for r in results) == ["charged"] + ["duplicate"] * 19
    assert account(client_stack, user)["quota"] == 900
    assert len(usage_entries(client_stack, user)) == 1


def test_a_refused_charge_is_a_rejected_result(client_stack: LocalStack, meter: Meter) -> None:
    user = funded_user(client_stack, 50)
    result = meter.charge(user_id=user, **USAGE)
    assert (result.status, result.error, result.ok) == ("rejected", "insufficient_quota", False)
    with pytest.raises(Rejected) as refused:
        result.raise_for_rejection()
    assert refused.value.error == "insufficient_quota"
    assert usage_record(client_stack, result.request_id) is None
    assert account(client_stack, user)["quota"] == 50


# ---------------------------------------------------------------- retries


def test_a_retry_after_a_lost_answer_charges_once(client_stack: LocalStack) -> None:
    user = funded_user(client_stack, 1000)
    with lossy_invoke_api(client_stack, hold_seconds=3.0) as relay:
        meter = Meter(
            endpoint_url=relay.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(read_timeout=1),
            retry=RetryPolicy(max_attempts=3, base_delay=0.01),
        )
        relay.lose_answers(1)
        before = meter_invocations(client_stack)
        result = meter.charge(user_id=user, **USAGE)
        # The first attempt ran (and charged) but its answer was lost; the retry, with the
        # same request_id, is told about that first charge.
        assert relay.attempts == 2
        assert meter_invocations(client_stack) - before == 2
    assert (result.status, result.first_status, result.attempts) == ("charged", "charged", 2)
    assert (result.quota, result.balance) == (100, 900)
    assert account(client_stack, user)["quota"] == 900
    assert [e["id"] for e in usage_entries(client_stack, user)] == [f"usage#{result.request_id}"]


def test_throttled_invocations_are_retried(client_stack: LocalStack) -> None:
    user = funded_user(client_stack, 1000)
    with lossy_invoke_api(client_stack) as relay:
        meter = Meter(
            endpoint_url=relay.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            retry=RetryPolicy(max_attempts=4, base_delay=0.01),
        )
        relay.throttle(2)
        before = meter_invocations(client_stack)
        result = meter.charge(user_id=user, **USAGE)
        assert relay.attempts == 3
        assert meter_invocations(client_stack) - before == 1
    assert (result.status, result.attempts, result.balance) == ("charged", 3, 900)


def test_throttling_beyond_the_retry_budget_raises(client_stack: LocalStack) -> None:
    user = funded_user(client_stack, 1000)
    with lossy_invoke_api(client_stack) as relay:
        meter = Meter(
            endpoint_url=relay.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            retry=RetryPolicy(max_attempts=3, base_delay=0.01),
        )
        relay.throttle(10)
        request_id = new_request_id()
        with pytest.raises(MeterError) as failed:
            meter.charge(request_id=request_id, user_id=user, **USAGE)
        assert relay.attempts == 3
    assert (failed.value.retryable, failed.value.attempts) == (True, 3)
    assert failed.value.request_ids == [request_id]
    assert usage_record(client_stack, request_id) is None


def test_transient_function_errors_are_retried_a_bounded_number_of_times(
    client_stack: LocalStack, meter_for: Callable[..., Meter]
) -> None:
    user = funded_user(client_stack, 1000)
    meter = meter_for(retry=RetryPolicy(max_attempts=3, base_delay=0.01))
    request_id = new_request_id()
    # Every read of this user's account fails: each invocation ends in a function error
    # that the function marks transient (TransientMeteringError).
    client_stack.fault(
        service="dynamodb",
        operation="GetItem",
        contains=user,
        error_code="InternalServerError",
        count=-1,
    )
    try:
        before = meter_invocations(client_stack)
        with pytest.raises(MeterError) as failed:
            meter.charge(request_id=request_id, user_id=user, **USAGE)
        assert meter_invocations(client_stack) - before == 3
    finally:
        client_stack.clear_faults()
    error = failed.value
    assert (error.retryable, error.attempts, error.code) == (True, 3, "TransientMeteringError")
    assert error.request_ids == [request_id]
    assert account(client_stack, user)["quota"] == 1000
    # Sent again later with the same request_id, the charge applies once.
    result = meter.charge(request_id=request_id, user_id=user, **USAGE)
    assert (result.status, result.balance) == ("charged", 900)
    assert len(usage_entries(client_stack, user)) == 1


def test_a_missing_function_fails_at_once(client_stack: LocalStack) -> None:
    user = funded_user(client_stack, 1000)
    meter = Meter(
        "NoSuchFunction",
        endpoint_url=client_stack.base_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        retry=RetryPolicy(max_attempts=4, base_delay=0.01),
    )
    with pytest.raises(MeterError) as failed:
        meter.charge(user_id=user, **USAGE)
    assert (failed.value.retryable, failed.value.attempts) == (False, 1)


# ---------------------------------------------------------------- bad arguments


BAD_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("charge", {"model": "gpt-4o", "prompt_tokens": 1, "completion_tokens": 1}),  # no user_id
    ("charge", {"user_id": "", "model": "gpt-4o", "prompt_tokens": 1, "completion_tokens": 1}),
    ("charge", {"user_id": "u", "model": "gpt-4o", "prompt_tokens": -1, "completion_tokens": 1}),
    ("reserve", {"user_id": "u", "model": "gpt-4o", "prompt_tokens": 1, "completion_tokens": -5}),
    ("charge", {"user_id": "u", "model": "gpt-4o", "prompt_tokens": 1.5, "completion_tokens": 1}),
    ("charge", {"user_id": "u", "model": "gpt-4o", "prompt_tokens": True, "completion_tokens": 1}),
    ("charge", {"user_id": "u", "model": "gpt-4o", "prompt_tokens": "3", "completion_tokens": 1}),
    ("charge", {"user_id": "u", "prompt_tokens": 1, "completion_tokens": 1}),  # no model
    ("settle", {"user_id": "u", "model": "gpt-4o", "prompt_tokens": 1}),  # no completion_tokens
    (
        "charge",
        {"user_id": "u" * 129, "model": "gpt-4o", "prompt_tokens": 1, "completion_tokens": 1},
    ),
    (
        "charge",
        {
            "user_id": "u",
            "model": "gpt-4o",
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "colour": "red",
        },
    ),
    (
        "charge",
        {
            "request_id": 7,
            "user_id": "u",
            "model": "gpt-4o",
            "prompt_tokens": 1,
            "completion_tokens": 1,
        },
    ),
    (
        "batch",
        {
            "events": [
                {
                    "action": "refund",
                    "user_id": "u",
                    "model": "gpt-4o",
                    "prompt_tokens": 1,
                    "completion_tokens": 1,
                }
            ]
        },
    ),
    (
        "batch",
        {
            "events": [
                {"user_id": "u", "model": "gpt-4o", "prompt_tokens": 1, "completion_tokens": 1}
            ]
        },
    ),  # no action
    ("batch", {"events": ["charge"]}),
    ("charge", {"action": "release", "user_id": "u", **USAGE}),
]


@pytest.mark.parametrize(("method", "arguments"), BAD_CALLS)
def test_bad_arguments_raise_before_any_call(
    client_stack: LocalStack, meter: Meter, method: str, arguments: dict[str, Any]
) -> None:
    before = meter_invocations(client_stack)
    with pytest.raises(ValueError):
        if method == "batch":
            # One good event first: a bad one anywhere stops the whole batch before a call.
            good = {"action": "charge", "user_id": "u", **USAGE}
            meter.batch([good, *arguments["events"]])
        else:
            getattr(meter, method)(**arguments)
    assert meter_invocations(client_stack) == before


def test_a_bad_hold_or_client_setting_raises_before_any_call(
    client_stack: LocalStack, meter: Meter
) -> None:
    before = meter_invocations(client_stack)
    with (
        pytest.raises(ValueError),
        meter.hold(user_id="u", model="gpt-4o", prompt_tokens=-1, completion_tokens=10),
    ):
        pass
    with pytest.raises(ValueError):
        Meter(max_batch_events=501, region_name="us-east-1")
    with pytest.raises(ValueError):
        meter.enqueue([{"action": "charge", "user_id": "u", **USAGE}])  # no queue_url
    assert meter_invocations(client_stack) == before


# ---------------------------------------------------------------- hold()


def test_hold_reserves_then_settles(client_stack: LocalStack, meter: Meter) -> None:
    user = funded_user(client_stack, 10_000)
    with meter.hold(user_id=user, model="gpt-4o", prompt_tokens=100, completion_tokens=500) as h:
        assert (h.reserved.status, h.reserved.quota) == ("reserved", price("gpt-4o", 100, 500))
        settled = h.settle(prompt_tokens=100, completion_tokens=20)
    assert (settled.status, settled.quota) == ("settled", price("gpt-4o", 100, 20))
    assert h.state == "settled" and h.released is None
    assert account(client_stack, user)["quota"] == 10_000 - price("gpt-4o", 100, 20)
    record = usage_record(client_stack, h.request_id)
    assert record is not None and record["status"] == "settled"
    with pytest.raises(RuntimeError):
        h.settle(prompt_tokens=1, completion_tokens=1)


def test_hold_without_a_settle_is_released(client_stack: LocalStack, meter: Meter) -> None:
    user = funded_user(client_stack, 10_000)
    with meter.hold(user_id=user, model="gpt-4o", prompt_tokens=100, completion_tokens=500) as h:
        pass
    assert h.released is not None and h.released.status == "released"
    record = usage_record(client_stack, h.request_id)
    assert record is not None and record["status"] == "released"
    assert account(client_stack, user)["quota"] == 10_000
    assert usage_entries(client_stack, user) == []


def test_hold_is_released_when_the_block_raises(client_stack: LocalStack, meter: Meter) -> None:
    user = funded_user(client_stack, 10_000)
    with (
        pytest.raises(ConnectionError, match="upstream"),
        meter.hold(user_id=user, model="gpt-4o", prompt_tokens=100, completion_tokens=5) as h,
    ):
        raise ConnectionError("upstream went away")
    record = usage_record(client_stack, h.request_id)
    assert record is not None and record["status"] == "released"
    assert account(client_stack, user)["quota"] == 10_000


def test_a_refused_hold_raises_rejected_and_holds_nothing(
    client_stack: LocalStack, meter: Meter
) -> None:
    user = funded_user(client_stack, 100)
    entered = False
    request_id = new_request_id()
    with (
        pytest.raises(Rejected) as refused,
        meter.hold(
            request_id=request_id,
            user_id=user,
            model="gpt-4o",
            prompt_tokens=100,
            completion_tokens=500,
        ),
    ):
        entered = True
    assert not entered
    assert (refused.value.error, refused.value.request_id) == ("insufficient_quota", request_id)
    assert usage_record(client_stack, request_id) is None
    assert account(client_stack, user)["quota"] == 100


def test_twenty_parallel_holds_on_quota_for_twelve(client_stack: LocalStack, meter: Meter) -> None:
    cost = price("gpt-4o", 80, 0)
    user = funded_user(client_stack, 12 * cost)
    served: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()
    start, start_settle = threading.Barrier(20, timeout=60), threading.Barrier(20, timeout=60)

    def call(_: int) -> None:
        start.wait()
        try:
            with meter.hold(user_id=user, **USAGE) as h:
                start_settle.wait()  # every hold is open before any is settled
                h.settle(prompt_tokens=80, completion_tokens=0)
            with lock:
                served.append(h.request_id)
        except Rejected as exc:
            with lock:
                refused.append(str(exc.error))
            start_settle.wait()

    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(call, range(20)))
    assert (len(served), refused) == (12, ["insufficient_quota"] * 8)
    assert account(client_stack, user)["quota"] == 0
    assert len(usage_entries(client_stack, user)) == 12


# ---------------------------------------------------------------- batch()


def test_batch_results_come_back_in_input_order_across_chunks(
    client_stack: LocalStack, meter_for: Callable[..., Meter]
) -> None:
    rich, poor = funded_user(client_stack, 10_000), funded_user(client_stack, 150)
    meter = meter_for(max_batch_events=3)
    events: list[dict[str, Any]] = [
        {"action": "charge", "user_id": rich, **USAGE},
        {"action": "charge", "user_id": poor, **USAGE},
        {"action": "charge", "user_id": poor, **USAGE},  # the second one it cannot pay
        {
            "action": "charge",
            "user_id": rich,
            "model": "no-such-model",
            "prompt_tokens": 1,
            "completion_tokens": 1,
        },
        {
            "action": "reserve",
            "user_id": rich,
            "model": "gpt-4o",
            "prompt_tokens": 0,
            "completion_tokens": 100,
        },
        {"action": "charge", "user_id": rich, **USAGE},
        {"action": "charge", "user_id": rich, **USAGE},
    ]
    before = meter_invocations(client_stack)
    results = meter.batch(events)
    assert meter_invocations(client_stack) - before == 3  # 3 + 3 + 1
    assert [r.status for r in results] == [
        "charged",
        "charged",
        "rejected",
        "rejected",
        "reserved",
        "charged",
        "charged",
    ]
    assert [r.error for r in results][2:4] == ["insufficient_quota", "unknown_model"]
    assert len({r.request_id for r in results}) == 7
    for result in results:
        record = usage_record(client_stack, result.request_id)
        assert (record is None) == (result.status == "rejected")
    assert account(client_stack, poor)["quota"] == 50
    assert account(client_stack, rich)["quota"] == 10_000 - 300


def test_a_batch_of_more_than_500_is_sent_in_chunks_of_500(
    client_stack: LocalStack, meter: Meter
) -> None:
    user = funded_user(client_stack, 1_000_000)
    events = [
        {
            "action": "charge",
            "user_id": user,
            "model": "gpt-4o-mini",
            "prompt_tokens": 100,
            "completion_tokens": 0,
        }
        for _ in range(501)
    ]
    before = meter_invocations(client_stack)
    results = meter.batch(events)
    assert meter_invocations(client_stack) - before == 2
    assert [r.status for r in results] == ["charged"] * 501
    cost = price("gpt-4o-mini", 100, 0)
    assert account(client_stack, user)["quota"] == 1_000_000 - 501 * cost


def test_a_batch_retried_after_a_lost_answer_applies_once(client_stack: LocalStack) -> None:
    user = funded_user(client_stack, 10_000)
    with lossy_invoke_api(client_stack, hold_seconds=3.0) as relay:
        meter = Meter(
            endpoint_url=relay.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(read_timeout=1),
            retry=RetryPolicy(max_attempts=3, base_delay=0.01),
        )
        relay.lose_answers(1)
        results = meter.batch([{"action": "charge", "user_id": user, **USAGE} for _ in range(5)])
        assert relay.attempts == 2
    assert [(r.status, r.attempts) for r in results] == [("charged", 2)] * 5
    assert account(client_stack, user)["quota"] == 9_500


# ---------------------------------------------------------------- queue mode


def test_queue_mode_charges_land_in_the_usage_table(
    client_stack: LocalStack, meter_for: Callable[..., Meter]
) -> None:
    user = funded_user(client_stack, 10_000)
    meter = meter_for(
        queue_url=client_stack.queue_url("UsageQueue"),
        queue_endpoint_url=client_stack.aws_endpoint,
    )
    single = meter.charge(user_id=user, **USAGE)
    assert (single.status, single.quota, single.balance) == ("queued", None, None)
    # 24 more: three SendMessageBatch calls (10, 10, 4); a reserve in the batch is invoked.
    events: list[dict[str, Any]] = [{"action": "charge", "user_id": user, **USAGE}] * 24
    events = [*events, {"action": "reserve", "user_id": user, **USAGE}]
    results = meter.batch(events)
    assert [r.status for r in results] == ["queued"] * 24 + ["reserved"]
    ids = [single.request_id] + [r.request_id for r in results[:24]]

    def all_charged() -> bool:
        records = [usage_record(client_stack, rid) for rid in ids]
        return all(r is not None and r["status"] == "charged" for r in records)

    wait_until(all_charged, timeout=60, message="the queued charges to be metered")
    assert account(client_stack, user)["quota"] == 10_000 - 25 * 100
    assert sum(-e["delta"] for e in usage_entries(client_stack, user)) == 2500


def test_queue_mode_retries_a_failed_send(
    client_stack: LocalStack, meter_for: Callable[..., Meter]
) -> None:
    user = funded_user(client_stack, 10_000)
    meter = meter_for(
        queue_url=client_stack.queue_url("UsageQueue"),
        queue_endpoint_url=client_stack.aws_endpoint,
    )
    client_stack.fault(
        service="sqs", operation="SendMessageBatch", error_code="ServiceUnavailable", count=2
    )
    try:
        result = meter.charge(user_id=user, **USAGE)
    finally:
        client_stack.clear_faults()
    assert result.status == "queued"
    wait_until(
        lambda: (usage_record(client_stack, result.request_id) or {}).get("status") == "charged",
        timeout=60,
        message="the queued charge",
    )
    assert account(client_stack, user)["quota"] == 9_900


class _PartlyFailingSqs:
    """SQS answering a SendMessageBatch partly (some entries Failed, SenderFault false),
    which the embedded SQS never does: it stands in for the AWS service here."""

    def __init__(self, real: Any, fail_first: int) -> None:
        self.real = real
        self.fail_first = fail_first
        self.calls: list[int] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(len(Entries))
        failing, passing = Entries[: self.fail_first], Entries[self.fail_first :]
        self.fail_first = 0
        response = self.real.send_message_batch(QueueUrl=QueueUrl, Entries=passing)
        failed = [
            {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "try again"}
            for e in failing
        ]
        return {"Successful": response.get("Successful", []), "Failed": failed}


def test_queue_mode_sends_the_entries_a_partial_failure_left(
    client_stack: LocalStack, meter_for: Callable[..., Meter]
) -> None:
    user = funded_user(client_stack, 10_000)
    sqs = _PartlyFailingSqs(client_stack.boto3_client("sqs"), fail_first=3)
    meter = meter_for(queue_url=client_stack.queue_url("UsageQueue"), sqs_client=sqs)
    results = meter.batch([{"action": "charge", "user_id": user, **USAGE} for _ in range(10)])
    assert sqs.calls == [10, 3]
    wait_until(
        lambda: all(
            (usage_record(client_stack, r.request_id) or {}).get("status") == "charged"
            for r in results
        ),
        timeout=60,
        message="the queued charges",
    )
    assert account(client_stack, user)["quota"] == 9_000
