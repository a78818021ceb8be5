"""Low-balance alerts and billing events on the local stack: the ledger's stream → the billing
events function → the EventBridge bus (GET /_local/events), exactly once per cause.

Charges go through the Invoke API of the metering function, funding through the admin
adjustment; the threshold through GET/PUT /account/alerts.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.billing_events import (
    PRICE,
    charge,
    charge_concurrently,
    fund,
    settle_stream,
    user_events,
    wait_events,
)
from tests.support.payments import (
    balance,
    get_order,
    new_user,
    paid_order,
    redeliver,
    sandbox_refund,
    wait_drained,
)
from tests.support.stack import LocalStack, template_copy, wait_for

# The billing events function's event source on the ledger table's stream (its logical id and
# event name in infra/template.yaml).
BILLING_STREAM = "BillingEventsFunction/LedgerStream"


def set_threshold(stack: LocalStack, token: str, threshold: int | None) -> dict[str, Any]:
    response = stack.request(
        "PUT", "/account/alerts", token=token, json={"low_balance_threshold": threshold}
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def alerts_item(stack: LocalStack, user: str) -> dict[str, Any] | None:
    item = stack.boto3_client("dynamodb").get_item(
        TableName=stack.table_name("AlertsTable"),
        Key={"user_id": {"S": user}},
        ConsistentRead=True,
    )
    found: dict[str, Any] | None = item.get("Item")
    return found


# ------------------------------------------------------------ the threshold


def test_the_threshold_is_read_and_set(stack: LocalStack) -> None:
    _, token = new_user(stack)
    got = stack.request("GET", "/account/alerts", token=token)
    assert got.status_code == 200
    assert got.json()["low_balance_threshold"] is None
    assert set_threshold(stack, token, 1000)["low_balance_threshold"] == 1000
    got = stack.request("GET", "/account/alerts", token=token).json()
    assert got["low_balance_threshold"] == 1000 and got["below_threshold"] is True
    assert set_threshold(stack, token, None)["low_balance_threshold"] is None
    assert (
        stack.request("GET", "/account/alerts", token=token).json()["low_balance_threshold"] is None
    )


def test_alerts_need_an_account(stack: LocalStack, user_id: str) -> None:
    token = stack.token(user_id)
    for method, body in (("GET", None), ("PUT", {"low_balance_threshold": 5})):
        response = stack.request(method, "/account/alerts", token=token, json=body)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "account_not_found"
    assert alerts_item(stack, user_id) is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"low_balance_threshold": -1},
        {"low_balance_threshold": 1.5},
        {"low_balance_threshold": "100"},
        {"low_balance_threshold": True},
        {"low_balance_threshold": 10**16},
        {"low_balance_threshold": 5, "extra": 1},
        [5],
    ],
)
def test_a_bad_threshold_is_refused_and_nothing_is_written(stack: LocalStack, body: Any) -> None:
    user, token = new_user(stack)
    response = stack.request("PUT", "/account/alerts", token=token, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert alerts_item(stack, user) is None


def test_a_body_that_is_not_json_is_refused(stack: LocalStack) -> None:
    user, token = new_user(stack)
    response = stack.request(
        "PUT",
        "/account/alerts",
        token=token,
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert alerts_item(stack, user) is None


def test_the_alerts_routes_need_a_token(stack: LocalStack) -> None:
    assert stack.request("GET", "/account/alerts").status_code == 401
    assert (
        stack.request("PUT", "/account/alerts", json={"low_balance_threshold": 1}).status_code
        == 401
    )


# ------------------------------------------------------------ crossing and re-arming


def test_twenty_concurrent_charges_crossing_the_threshold_alert_once_then_rearm(
    stack: LocalStack,
) -> None:
    user, token = new_user(stack)
    fund(stack, user, 50 * PRICE)
    set_threshold(stack, token, 35 * PRICE)

    # 50 → 30 prices: the 16th charge takes the balance from 35 (at the threshold) to 34.
    charge_concurrently(stack, user, 20)
    low = wait_events(stack, user, "balance.low", 1)
    settle_stream(stack)
    low = user_events(stack, user, "balance.low")
    assert len(low) == 1, low
    assert low[0]["quota"] == 34 * PRICE and low[0]["threshold"] == 35 * PRICE
    assert set(low[0]) >= {"id", "type", "user_id", "quota", "threshold", "created_at"}

    # At the threshold again is not above it: still disarmed, no second alert.
    fund(stack, user, 5 * PRICE)  # 35
    charge(stack, user)  # 34
    settle_stream(stack)
    assert len(user_events(stack, user, "balance.low")) == 1

    # Back above it re-arms; down again alerts a second time, with its own id.
    fund(stack, user, 10 * PRICE)  # 44
    charge_concurrently(stack, user, 12)  # 32
    second = wait_events(stack, user, "balance.low", 2)
    settle_stream(stack)
    second = user_events(stack, user, "balance.low")
    assert len(second) == 2 and second[0]["id"] != second[1]["id"]
    assert second[1]["quota"] == 34 * PRICE
    assert user_events(stack, user, "balance.depleted") == []


def test_depletion_emits_balance_depleted_once(stack: LocalStack) -> None:
    user, token = new_user(stack)
    fund(stack, user, 6 * PRICE)
    set_threshold(stack, token, 2 * PRICE)
    charge_concurrently(stack, user, 6)  # exactly to zero
    depleted = wait_events(stack, user, "balance.depleted", 1)
    low = wait_events(stack, user, "balance.low", 1)
    settle_stream(stack)
    assert len(user_events(stack, user, "balance.depleted")) == 1
    assert depleted[0]["quota"] == 0 and low[0]["quota"] == 1 * PRICE
    refused = charge(stack, user)
    assert refused["status"] == "rejected" and refused["error"] == "insufficient_quota"


def test_no_threshold_no_low_alert(stack: LocalStack) -> None:
    user, _ = new_user(stack)
    fund(stack, user, 3 * PRICE)
    charge_concurrently(stack, user, 2)
    charge(stack, user)
    wait_events(stack, user, "balance.depleted", 1)
    assert user_events(stack, user, "balance.low") == []


def test_a_paid_topup_emits_topup_paid(stack: LocalStack) -> None:
    user, _, order, _ = paid_order(stack, amount=10)
    paid = wait_events(stack, user, "topup.paid", 1)
    assert paid[0]["order_id"] == order["order_id"]
    assert paid[0]["quota"] == order["quota"]


@pytest.mark.parametrize(
    "refunds",
    [pytest.param([None], id="in-full"), pytest.param([300, None], id="partial-then-rest")],
)
def test_each_refund_of_a_paid_topup_emits_one_topup_refunded(
    stack: LocalStack, refunds: list[int | None]
) -> None:
    """A refund through the Stripe sandbox (charge.refunded with the cumulative amount, each
    notification delivered twice) emits one `topup.refunded` per refund: a partial refund
    its proportional share, the rest the remainder; repeats emit nothing more."""
    user, token, order, _ = paid_order(stack, amount=10)  # 10.00 USD, 1000 minor units
    quota = order["quota"]
    wait_events(stack, user, "topup.paid", 1)
    refunded_minor, reversed_so_far = 0, 0
    for step, minor in enumerate(refunds, start=1):
        sent = sandbox_refund(stack, order, minor)
        assert redeliver(stack, sent) == 200  # the provider repeats its notification
        refunded_minor = 1000 if minor is None else refunded_minor + minor
        due = quota if refunded_minor == 1000 else quota * refunded_minor // 1000
        wait_events(stack, user, "topup.refunded", step)
        wait_drained(stack)
        settle_stream(stack)
        events = user_events(stack, user, "topup.refunded")
        assert len(events) == step, events
        latest = events[-1]
        assert set(latest) >= {"id", "type", "user_id", "quota", "created_at"}
        assert (latest["type"], latest["user_id"], latest["order_id"]) == (
            "topup.refunded",
            user,
            order["order_id"],
        )
        assert latest["delta"] == -(due - reversed_so_far)
        reversed_so_far = due
        # `quota` is the balance the refund left (nothing else moved it).
        assert latest["quota"] == quota - due == balance(stack, token, user)
    events = user_events(stack, user, "topup.refunded")
    assert len({e["id"] for e in events}) == len(refunds)
    assert sum(e["delta"] for e in events) == -quota
    assert get_order(stack, token, order["order_id"])["status"] == "refunded"
    assert len(user_events(stack, user, "topup.paid")) == 1


# ------------------------------------------------------------ crashes and retries


def billing_stream_stats(stack: LocalStack) -> dict[str, int]:
    """The local stack's counters of the billing events function's ledger stream source."""
    streams: dict[str, dict[str, int]] = stack.stats()["streams"]
    return streams[BILLING_STREAM]


def test_a_batch_retried_after_a_crash_publishes_nothing_twice(stack: LocalStack) -> None:
    user, token = new_user(stack)
    fund(stack, user, 10 * PRICE)
    set_threshold(stack, token, 8 * PRICE)
    before = billing_stream_stats(stack)
    # The first put of this user's events fails (after the outbox was written): the function
    # fails, the stream retries the batch, and the retry puts the recorded events once.
    stack.fault(
        service="events",
        operation="PutEvents",
        error_code="ValidationException",
        status=400,
        count=1,
        contains=user,
    )
    try:
        charge_concurrently(stack, user, 10)  # to zero: low and depleted
        wait_events(stack, user, "balance.low", 1)
        wait_events(stack, user, "balance.depleted", 1)
        [fault] = [f for f in stack.faults()["faults"] if f["contains"] == user]
    finally:
        stack.clear_faults()
    settle_stream(stack)
    # The fault did fire, and on the billing events function's stream: its batch failed
    # (whole or in part) and was delivered again.
    assert fault["fired"] == 1, fault
    after = billing_stream_stats(stack)
    failed = (after["function_errors"] + after["partial_failures"]) - (
        before["function_errors"] + before["partial_failures"]
    )
    assert failed >= 1, (before, after)
    assert after["invocations"] - before["invocations"] > failed, (before, after)
    assert after["discarded"] == before["discarded"], (before, after)
    # ... and nothing was published twice.
    events = user_events(stack, user)
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), events
    assert sorted(e["type"] for e in events) == ["balance.depleted", "balance.low"]


def test_a_crash_after_the_put_resends_the_same_ids(stack: LocalStack) -> None:
    user, token = new_user(stack)
    fund(stack, user, 4 * PRICE)
    set_threshold(stack, token, 3 * PRICE)
    # The put takes effect but the function sees an error (a lost response): the retry puts
    # the outbox again, under the same ids, never new ones.
    stack.fault(
        service="events",
        operation="PutEvents",
        error_code="ValidationException",
        status=400,
        count=1,
        contains=user,
        after_commit=True,
    )
    try:
        charge(stack, user)  # 3: at the threshold
        charge(stack, user)  # 2: low
        wait_for(
            lambda: len(user_events(stack, user, "balance.low")) >= 2,
            timeout=30,
            message="the re-sent event",
        )
    finally:
        stack.clear_faults()
    settle_stream(stack)
    low = user_events(stack, user, "balance.low")
    assert len({e["id"] for e in low}) == 1, low


# ------------------------------------------------------------ IAM


def _without_put_events(document: dict[str, Any]) -> None:
    function = document["Resources"]["BillingEventsFunction"]["Properties"]
    statements = function["Policies"][0]["Statement"]
    kept = [s for s in statements if s["Action"] != ["events:PutEvents"]]
    assert len(kept) == len(statements) - 1, "BillingEventsFunction has no PutEvents statement"
    function["Policies"][0]["Statement"] = kept


def test_without_put_events_nothing_is_published_and_the_batch_reaches_the_dlq() -> None:
    template = template_copy("alerts-no-put-events", _without_put_events)
    with LocalStack(
        "alerts-no-put-events", expect_access_denied={"BillingEventsFunction"}
    ) as local:
        local.start(template, env={"LOCAL_SCHEDULES": "0"})
        user, token = new_user(local)
        fund(local, user, 2 * PRICE)
        set_threshold(local, token, 2 * PRICE)
        charge(local, user)  # 1: low

        def dlq_depth() -> int:
            attributes = local.boto3_client("sqs").get_queue_attributes(
                QueueUrl=local.queue_url("BillingEventsDLQ"),
                AttributeNames=["ApproximateNumberOfMessages"],
            )["Attributes"]
            return int(attributes["ApproximateNumberOfMessages"])

        wait_for(lambda: dlq_depth() >= 1, timeout=90, message="the given-up batch in the DLQ")
        refused = [
            d
            for d in local.iam()["denials"]
            if d["function"] == "BillingEventsFunction" and d["action"] == "events:PutEvents"
        ]
        assert refused and refused[0]["resource"].endswith(":event-bus/quota-local-billing")
        assert user_events(local, user) == []
        # What was decided is kept for a replay, not lost: the outbox holds the event.
        item = alerts_item(local, user)
        assert item is not None and "balance.low" in item["outbox"]["S"]
