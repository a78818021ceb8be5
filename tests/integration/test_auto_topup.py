"""Auto top-up on the local stack: a card saved at checkout (save_card), the rule (GET/PUT
/account/auto-topup), and the off-session Stripe payment the ledger's stream triggers when a
debit takes the balance under the rule's threshold, credited by the normal webhook pipeline.

The Stripe sandbox plays the saved card: `POST /_local/sandbox/cards/{user}` chooses whether it
pays, declines or asks for authentication.
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
from tests.support.payments import UNIT, balance, ledger_entries, new_user, orders_of, wait_status
from tests.support.stack import LocalStack, wait_for

AMOUNT = 10  # units per auto top-up: 10 x 500000 quota, 10.00 USD at the local settings


def save_card(stack: LocalStack, token: str, amount: int = AMOUNT) -> dict[str, Any]:
    response = stack.request(
        "POST",
        "/checkout",
        token=token,
        json={"amount": amount, "method": "stripe", "save_card": True},
    )
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    assert order["save_card"] is True
    paid = stack.pay(order["order_id"])
    assert paid.status_code == 200 and paid.json()["webhook_status"] == 200, paid.text
    wait_status(stack, token, order["order_id"], "paid")
    return order


def card_behaviour(stack: LocalStack, user: str, behaviour: str) -> None:
    response = stack.http.post(
        f"{stack.base_url}/_local/sandbox/cards/{user}", json={"behaviour": behaviour}, timeout=10
    )
    assert response.status_code == 200, response.text


def put_rule(stack: LocalStack, token: str, **fields: Any) -> Any:
    body = {"enabled": True, "threshold": 0, "amount": AMOUNT, "method": "stripe", **fields}
    return stack.request("PUT", "/account/auto-topup", token=token, json=body)


def enable(stack: LocalStack, token: str, **fields: Any) -> dict[str, Any]:
    response = put_rule(stack, token, **fields)
    assert response.status_code == 200, response.text
    rule: dict[str, Any] = response.json()
    assert rule["enabled"] is True and rule["state"] == "active"
    return rule


def get_rule(stack: LocalStack, token: str) -> dict[str, Any]:
    response = stack.request("GET", "/account/auto-topup", token=token)
    assert response.status_code == 200, response.text
    rule: dict[str, Any] = response.json()
    return rule


def auto_orders(stack: LocalStack, user: str) -> list[dict[str, Any]]:
    return [o for o in orders_of(stack, user) if o.get("auto", {}).get("BOOL")]


def topup_entries(stack: LocalStack, user: str) -> list[dict[str, Any]]:
    return [e for e in ledger_entries(stack, user) if e["kind"]["S"] == "topup"]


def rule_item(stack: LocalStack, user: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = (
        stack.boto3_client("dynamodb")
        .get_item(
            TableName=stack.table_name("AutoTopupTable"),
            Key={"user_id": {"S": user}},
            ConsistentRead=True,
        )
        .get("Item")
    )
    return found


def wait_auto_paid(stack: LocalStack, user: str, count: int) -> list[dict[str, Any]]:
    return wait_for(
        lambda: (
            found
            if len(found := [o for o in auto_orders(stack, user) if o["status"]["S"] == "paid"])
            >= count
            else None
        ),
        timeout=40,
        message=f"{count} paid auto top-ups of {user}",
    )


def wait_idle(stack: LocalStack, token: str) -> dict[str, Any]:
    """The rule once no payment is pending (its credit has been seen on the stream)."""
    return wait_for(
        lambda: rule if (rule := get_rule(stack, token))["state"] != "pending" else None,
        timeout=40,
        message="the auto top-up marker to clear",
    )


# ------------------------------------------------------------ saving a card, the rule


def test_a_card_saved_at_checkout_shows_on_the_rule(stack: LocalStack) -> None:
    user, token = new_user(stack)
    assert get_rule(stack, token) == {"enabled": False, "state": "off", "saved_card": None}
    save_card(stack, token)
    rule = get_rule(stack, token)
    assert rule["saved_card"] == {"brand": "visa", "last4": "4242"}
    enabled = enable(stack, token, threshold=3 * UNIT, max_per_day=2)
    assert enabled["threshold"] == 3 * UNIT and enabled["max_per_day"] == 2
    assert enabled["amount"] == AMOUNT and enabled["failures"] == 0
    assert get_rule(stack, token)["enabled"] is True
    off = put_rule(stack, token, enabled=False, threshold=3 * UNIT)
    assert off.status_code == 200 and off.json()["state"] == "off"
    assert rule_item(stack, user) is not None


def test_enabling_without_a_saved_card_is_refused_and_writes_nothing(stack: LocalStack) -> None:
    user, token = new_user(stack)
    response = put_rule(stack, token, threshold=UNIT)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "no_saved_card"
    assert rule_item(stack, user) is None


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "invalid_amount"),  # amount missing (as POST /checkout answers it)
        ({"enabled": True, "threshold": 1, "amount": 10}, "invalid_request"),
        ({"enabled": "yes", "threshold": 1, "amount": 10, "method": "stripe"}, "invalid_request"),
        ({"enabled": True, "threshold": -1, "amount": 10, "method": "stripe"}, "invalid_request"),
        ({"enabled": True, "threshold": 1.5, "amount": 10, "method": "stripe"}, "invalid_request"),
        ({"enabled": True, "threshold": 1, "amount": 0, "method": "stripe"}, "invalid_amount"),
        ({"enabled": True, "threshold": 1, "amount": 10**9, "method": "stripe"}, "invalid_amount"),
        ({"enabled": True, "threshold": 1, "amount": "10", "method": "stripe"}, "invalid_amount"),
        ({"enabled": True, "threshold": 1, "amount": 10, "method": "epay"}, "invalid_request"),
        (
            {"enabled": True, "threshold": 1, "amount": 10, "method": "stripe", "max_per_day": 0},
            "invalid_request",
        ),
        (
            {"enabled": True, "threshold": 1, "amount": 10, "method": "stripe", "x": 1},
            "invalid_request",
        ),
    ],
)
def test_a_bad_rule_is_refused_and_nothing_is_written(
    stack: LocalStack, body: dict[str, Any], code: str
) -> None:
    user, token = new_user(stack)
    response = stack.request("PUT", "/account/auto-topup", token=token, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
    assert rule_item(stack, user) is None


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 10, "method": "epay", "save_card": True},
        {"amount": 10, "method": "stripe", "save_card": "yes"},
        {"amount": 10, "method": "stripe", "save_card": 1},
    ],
)
def test_a_bad_save_card_checkout_is_refused_and_writes_nothing(
    stack: LocalStack, body: dict[str, Any]
) -> None:
    user, token = new_user(stack)
    response = stack.request("POST", "/checkout", token=token, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert orders_of(stack, user) == []


# ------------------------------------------------------------ the payment


def test_thirty_concurrent_charges_under_the_threshold_make_one_payment_credited_once(
    stack: LocalStack,
) -> None:
    user, token = new_user(stack)
    save_card(stack, token)  # 10 units = 250 charges
    start = balance(stack, token, user)
    enable(stack, token, threshold=start - 10 * PRICE)
    charge_concurrently(stack, user, 30)  # the 11th goes under the threshold

    paid = wait_auto_paid(stack, user, 1)
    rule = wait_idle(stack, token)
    settle_stream(stack)
    assert len(auto_orders(stack, user)) == 1, auto_orders(stack, user)
    order = paid[0]
    assert int(order["quota"]["N"]) == AMOUNT * UNIT and order["pay_money"]["S"] == "10.00"
    assert len(topup_entries(stack, user)) == 2  # the card-saving top-up and the auto one
    assert balance(stack, token, user) == start - 30 * PRICE + AMOUNT * UNIT
    assert rule["failures"] == 0 and rule["last_success"]["order_id"] == order["order_id"]["S"]
    # The order reads as an ordinary Stripe top-up, marked auto.
    shown = stack.request("GET", f"/topups/{order['order_id']['S']}", token=token).json()
    assert shown["auto"] is True and shown["status"] == "paid" and shown["method"] == "stripe"
    assert [e["order_id"] for e in user_events(stack, user, "topup.paid")][-1] == shown["order_id"]


def test_declines_emit_auto_failed_and_the_third_disables_the_rule(stack: LocalStack) -> None:
    user, token = new_user(stack)
    save_card(stack, token)
    start = balance(stack, token, user)
    card_behaviour(stack, user, "decline")
    enable(stack, token, threshold=start, max_per_day=5)

    for failure in (1, 2, 3):
        charge(stack, user)  # a debit under the threshold: one attempt, declined
        failed = wait_events(stack, user, "topup.auto_failed", failure)
        rule = wait_for(
            lambda n=failure: r if (r := get_rule(stack, token))["failures"] == n else None,
            timeout=30,
            message=f"failure {failure} on the rule",
        )
        assert failed[-1]["code"] == "card_declined"
        assert rule["last_failure"]["code"] == "card_declined"
    assert rule["enabled"] is False and rule["state"] == "disabled_after_failures"
    assert failed[-1]["rule_disabled"] is True
    # Disabled: further debits try nothing.
    charge(stack, user)
    settle_stream(stack)
    assert len(user_events(stack, user, "topup.auto_failed")) == 3
    orders = auto_orders(stack, user)
    assert len(orders) == 3 and {o["status"]["S"] for o in orders} == {"failed"}
    assert len(topup_entries(stack, user)) == 1
    # Enabling again starts afresh.
    card_behaviour(stack, user, "succeed")
    assert enable(stack, token, threshold=start, max_per_day=5)["failures"] == 0


def test_a_card_that_needs_authentication_fails_with_requires_action(stack: LocalStack) -> None:
    user, token = new_user(stack)
    save_card(stack, token)
    start = balance(stack, token, user)
    card_behaviour(stack, user, "requires_action")
    enable(stack, token, threshold=start)
    charge(stack, user)
    failed = wait_events(stack, user, "topup.auto_failed", 1)
    assert failed[0]["code"] == "requires_action" and failed[0]["quota"] == start - PRICE
    rule = wait_for(
        lambda: r if (r := get_rule(stack, token))["failures"] == 1 else None, timeout=30
    )
    assert rule["enabled"] is True and rule["last_failure"]["code"] == "requires_action"
    assert balance(stack, token, user) == start - PRICE


def test_max_per_day_holds_until_the_next_billing_day(stack: LocalStack) -> None:
    user, token = new_user(stack)
    save_card(stack, token)
    start = balance(stack, token, user)
    enable(stack, token, threshold=start - PRICE, max_per_day=1)

    charge(stack, user)
    charge(stack, user)  # under the threshold: today's one payment
    wait_auto_paid(stack, user, 1)
    wait_idle(stack, token)
    # Under the threshold again the same day: no second payment.
    fund(stack, user, -(AMOUNT * UNIT))
    charge(stack, user)
    settle_stream(stack)
    assert len(auto_orders(stack, user)) == 1
    assert get_rule(stack, token)["today_count"] == 1

    stack.advance_clock(86_400)  # the next billing day
    charge(stack, user)
    wait_auto_paid(stack, user, 2)
    settle_stream(stack)
    assert len(auto_orders(stack, user)) == 2
    assert len(topup_entries(stack, user)) == 3
