"""Referral rewards end to end on the local stack: binding, the rebate on an invited user's
top-up (once, whatever the duplicates), the transfer to the balance, and the clawback."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.payments import (
    UNIT,
    checkout,
    ledger_entries,
    post_webhook,
    sandbox_event,
    session_event,
    sign,
    wait_drained,
    wait_status,
)
from tests.support.stack import LocalStack, wait_for

EVENTS = Path(__file__).resolve().parents[2] / "events"
REBATE_PERCENT = 10  # settings/local.json


def account(stack: LocalStack, token: str) -> dict[str, Any]:
    response = stack.request("GET", "/account", token=token)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def sums(stack: LocalStack, user: str) -> dict[str, int]:
    totals = {"quota": 0, "aff_quota": 0}
    for item in ledger_entries(stack, user):
        totals[item["balance"]["S"]] += int(item["delta"]["N"])
    return totals


def assert_ledger_matches(stack: LocalStack, user: str, token: str) -> dict[str, Any]:
    current = account(stack, token)
    assert sums(stack, user) == {"quota": current["quota"], "aff_quota": current["aff_quota"]}
    return current


def pair(stack: LocalStack) -> tuple[str, str, str, str]:
    """An inviter A and an invitee B bound to A at creation."""
    inviter = f"inviter-{uuid.uuid4().hex[:10]}"
    invitee = f"invitee-{uuid.uuid4().hex[:10]}"
    inviter_token, invitee_token = stack.token(inviter), stack.token(invitee)
    code = stack.request("POST", "/account", token=inviter_token, json={}).json()["aff_code"]
    created = stack.request("POST", "/account", token=invitee_token, json={"referral_code": code})
    assert created.status_code == 201 and created.json()["inviter_id"] == inviter
    return inviter, inviter_token, invitee, invitee_token


def transfer(stack: LocalStack, token: str, quota: Any, key: str | None = None) -> Any:
    headers = {"idempotency-key": key} if key else None
    return stack.request(
        "POST", "/referral/transfer", token=token, json={"quota": quota}, headers=headers
    )


def test_rebate_once_then_transfer_then_clawback(stack: LocalStack) -> None:
    inviter, inviter_token, invitee, invitee_token = pair(stack)
    assert account(stack, inviter_token)["aff_count"] == 1

    order = checkout(stack, invitee_token, amount=10)
    paid = stack.pay(order["order_id"]).json()
    wait_status(stack, invitee_token, order["order_id"], "paid")
    # the same payment webhook 10 more times, concurrently, and under new event ids
    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(
            pool.map(
                lambda _: stack.request(
                    "POST", f"/_local/sandbox/stripe/redeliver/{paid['event_id']}"
                ).json()["webhook_status"],
                range(10),
            )
        )
    assert statuses == [200] * 10
    for _ in range(3):
        body = session_event(order, payment_intent=paid["payment_intent"])
        assert post_webhook(stack, body, sign(body)).status_code == 200
    wait_drained(stack)

    rebate = 10 * UNIT * REBATE_PERCENT // 100
    inviter_account = assert_ledger_matches(stack, inviter, inviter_token)
    assert inviter_account["aff_quota"] == rebate
    assert inviter_account["aff_history_quota"] == rebate
    assert inviter_account["quota"] == 0
    rewards = [
        item for item in ledger_entries(stack, inviter) if item["kind"]["S"] == "referral_reward"
    ]
    assert [item["entry_id"]["S"] for item in rewards] == [f"referral_reward#{order['order_id']}"]
    assert assert_ledger_matches(stack, invitee, invitee_token)["quota"] == 10 * UNIT

    # transfer the reward to the balance: two ledger entries, one on each balance
    moved = transfer(stack, inviter_token, rebate)
    assert moved.status_code == 200, moved.text
    assert moved.json() == {"aff_quota": 0, "quota": rebate}
    feed = stack.request("GET", "/ledger?limit=2", token=inviter_token).json()["items"]
    assert {(item["kind"], item["balance"], item["delta"]) for item in feed} == {
        ("referral_transfer", "aff_quota", -rebate),
        ("referral_transfer", "quota", rebate),
    }
    assert_ledger_matches(stack, inviter, inviter_token)

    # a refund of B's order claws the rebate back once; A moved it to its balance, so it is
    # taken back from there: A's balances are what they were before the rebate
    refund = sandbox_event(stack, order, "charge.refunded")
    wait_status(stack, invitee_token, order["order_id"], "refunded")
    stack.request("POST", f"/_local/sandbox/stripe/redeliver/{refund['event_id']}")
    wait_drained(stack)
    after = assert_ledger_matches(stack, inviter, inviter_token)
    assert (after["quota"], after["aff_quota"], after["aff_history_quota"]) == (0, 0, 0)
    clawbacks = [
        item["entry_id"]["S"]
        for item in ledger_entries(stack, inviter)
        if item["entry_id"]["S"].startswith("referral_clawback#")
    ]
    assert clawbacks == [f"referral_clawback#{order['order_id']}#1000#quota"]
    # nothing is left to transfer
    blocked = transfer(stack, inviter_token, UNIT)
    assert blocked.status_code == 400
    assert blocked.json()["error"]["code"] == "insufficient_aff_quota"


def test_users_without_an_inviter_earn_nobody_a_rebate(stack: LocalStack) -> None:
    user = f"solo-{uuid.uuid4().hex[:10]}"
    token = stack.token(user)
    stack.request("POST", "/account", token=token, json={})
    order = checkout(stack, token, amount=5)
    stack.pay(order["order_id"])
    wait_status(stack, token, order["order_id"], "paid")
    kinds = {item["kind"]["S"] for item in ledger_entries(stack, user)}
    assert kinds == {"topup"}


def rewarded_inviter(stack: LocalStack, amount: int = 20) -> tuple[str, str, int]:
    """An inviter whose invitee was credited through the admin route: aff_quota = rebate."""
    inviter, inviter_token, _invitee, invitee_token = pair(stack)
    order = checkout(stack, invitee_token, amount=amount)
    admin = stack.token(f"admin-{uuid.uuid4().hex[:8]}", admin=True)
    done = stack.request("POST", f"/admin/topups/{order['order_id']}/complete", token=admin)
    assert done.status_code == 200, done.text
    rebate = amount * UNIT * REBATE_PERCENT // 100
    wait_for(lambda: account(stack, inviter_token)["aff_quota"] == rebate, timeout=30)
    return inviter, inviter_token, rebate


def test_twenty_concurrent_transfers_never_overdraw(stack: LocalStack) -> None:
    inviter, token, rebate = rewarded_inviter(stack, amount=20)  # rebate = 2 units
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda _: transfer(stack, token, UNIT), range(20)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(200) == rebate // UNIT == 2
    assert all(
        response.json()["error"]["code"] == "insufficient_aff_quota"
        for response in responses
        if response.status_code != 200
    )
    final = assert_ledger_matches(stack, inviter, token)
    assert final["aff_quota"] == 0 and final["quota"] == rebate


def test_a_retried_transfer_with_the_same_key_moves_once(stack: LocalStack) -> None:
    inviter, token, rebate = rewarded_inviter(stack, amount=20)
    key = f"transfer-{uuid.uuid4().hex}"
    first = transfer(stack, token, UNIT, key)
    again = transfer(stack, token, UNIT, key)
    assert first.status_code == again.status_code == 200
    assert again.json() == {"aff_quota": rebate - UNIT, "quota": UNIT}
    assert_ledger_matches(stack, inviter, token)


@pytest.mark.parametrize(
    ("quota", "code"),
    [
        (0, "transfer_below_minimum"),
        (-UNIT, "transfer_below_minimum"),
        (UNIT - 1, "transfer_below_minimum"),
        (1.5, "invalid_request"),
        ("500000", "invalid_request"),
        (None, "invalid_request"),
        (10**9, "insufficient_aff_quota"),
    ],
)
def test_bad_transfer_amounts_are_400_and_write_nothing(
    stack: LocalStack, quota: Any, code: str
) -> None:
    user = f"xfer-{uuid.uuid4().hex[:10]}"
    token = stack.token(user)
    stack.request("POST", "/account", token=token, json={})
    response = transfer(stack, token, quota)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert ledger_entries(stack, user) == []
    assert account(stack, token)["quota"] == 0


def test_unknown_fields_and_missing_accounts_are_refused(stack: LocalStack) -> None:
    token = stack.token(f"ghost-{uuid.uuid4().hex[:10]}")
    extra = stack.request(
        "POST", "/referral/transfer", token=token, json={"quota": UNIT, "to": "someone"}
    )
    assert extra.status_code == 400 and extra.json()["error"]["code"] == "invalid_request"
    missing = transfer(stack, token, UNIT)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "account_not_found"


def test_the_options_explain_the_minimum_and_the_rebate(stack: LocalStack) -> None:
    token = stack.token(f"opt-{uuid.uuid4().hex[:10]}")
    options = stack.request("GET", "/topup/options", token=token).json()
    assert options["referral_min_transfer"] == UNIT
    assert options["referral_rebate_percent"] == str(REBATE_PERCENT)


def test_sample_event_runs_through_the_invoke_api(stack: LocalStack) -> None:
    event = json.loads((EVENTS / "referral_transfer.json").read_text())
    user = f"evt-{uuid.uuid4().hex[:10]}"
    event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = user
    stack.request("POST", "/account", token=stack.token(user), json={})
    result = stack.invoke("ReferralTransferFunction", event)
    assert result["statusCode"] == 400
    assert json.loads(result["body"])["error"]["code"] == "insufficient_aff_quota"
