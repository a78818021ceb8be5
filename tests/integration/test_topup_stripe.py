"""Online top-up with Stripe on the local stack: checkout → sandbox pay → signed webhook → credit
queue → exactly-once credit; duplicates, out-of-order and tampered webhooks; refunds and
disputes; crashes and poison messages; bad input; admin completion.

Webhooks the sandbox does not send (tampered ones, or several ids for one payment) are signed
here with the dev webhook secret, as Stripe documents: v1 = hex HMAC-SHA256 of "{t}.{body}".
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import Api, Tables, drain, post_stripe
from tests.support.payments import (
    UNIT,
    balance,
    checkout,
    entry_ids,
    get_order,
    new_user,
    orders_of,
    paid_order,
    post_webhook,
    sandbox_event,
    session_event,
    sign,
    wait_drained,
    wait_status,
)
from tests.support.reconcile import check_stack_account
from tests.support.stack import LocalStack, wait_for

EVENTS = Path(__file__).resolve().parents[2] / "events"


# ------------------------------------------------------------ the happy paths


def test_a_user_tops_up_through_the_sandbox(stack: LocalStack) -> None:
    user, token = new_user(stack)
    options = stack.request("GET", "/topup/options", token=token).json()
    stripe = next(m for m in options["methods"] if m["id"] == "stripe")
    assert stripe["currency"] == "USD" and stripe["unit_price"] == "1.00"

    order = checkout(stack, token, amount=100)  # 100 units: discount 0.95
    assert order["pay_money"] == "95.00" and order["currency"] == "USD"
    assert order["quota"] == 100 * UNIT and order["paid_at"] is None
    assert stack.pay(order["order_id"]).json()["webhook_status"] == 200

    paid = wait_status(stack, token, order["order_id"], "paid")
    assert paid["paid_at"] is not None
    assert balance(stack, token, user) == 100 * UNIT
    ledger = stack.request("GET", "/ledger", token=token).json()["items"]
    assert [(e["kind"], e["delta"], e["ref"]) for e in ledger] == [
        ("topup", 100 * UNIT, order["order_id"])
    ]
    # /topups reads the orders' by-user index, eventually consistent: it shows "paid" soon
    listed = wait_for(
        lambda: (
            page
            if (page := stack.request("GET", "/topups", token=token).json())["items"]
            and page["items"][0]["status"] == "paid"
            else None
        ),
        message="the paid order in /topups",
    )
    assert [o["order_id"] for o in listed["items"]] == [order["order_id"]]


def test_the_hosted_pay_page_pays_and_returns_to_the_console(stack: LocalStack) -> None:
    user, token = new_user(stack)
    order = checkout(stack, token, amount=5)
    page = stack.http.get(order["pay_url"], timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "5.00 USD" in page.text and 'value="paid"' in page.text and 'value="failed"' in page.text

    submitted = stack.http.post(
        order["pay_url"], data={"outcome": "paid"}, allow_redirects=False, timeout=30
    )
    assert submitted.status_code == 303
    assert submitted.headers["Location"] == (
        f"{stack.base_url}/console/topup?order={order['order_id']}"
    )
    wait_status(stack, token, order["order_id"], "paid")
    assert balance(stack, token, user) == 5 * UNIT


def test_a_failed_payment_fails_the_order_and_credits_nothing(stack: LocalStack) -> None:
    user, token = new_user(stack)
    order = checkout(stack, token)
    assert stack.pay(order["order_id"], outcome="failed").json()["webhook_status"] == 200
    wait_status(stack, token, order["order_id"], "failed")
    assert balance(stack, token, user) == 0 and entry_ids(stack, user) == []


def test_the_sandbox_stripe_api_checks_the_key_and_honours_idempotency(stack: LocalStack) -> None:
    form = {
        "mode": "payment",
        "line_items[0][quantity]": "1",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "700",
        "line_items[0][price_data][product_data][name]": "Test",
        "client_reference_id": f"ord_idem_{uuid.uuid4().hex[:8]}",
        "success_url": "http://example.invalid/ok",
    }
    url = "/_local/sandbox/stripe/v1/checkout/sessions"
    unauthorised = stack.request("POST", url, data=form, headers={"Authorization": "Bearer sk_x"})
    assert unauthorised.status_code == 401
    headers = {"Authorization": "Bearer sk_test_local", "Idempotency-Key": uuid.uuid4().hex}
    first = stack.request("POST", url, data=form, headers=headers)
    again = stack.request("POST", url, data=form, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"] and first.json()["amount_total"] == 700
    other = stack.request(
        "POST",
        url,
        data={**form, "mode": "payment", "line_items[0][quantity]": "2"},
        headers=headers,
    )
    assert other.status_code == 400


# ------------------------------------------------------------ exactly once


def test_one_webhook_delivered_ten_times_concurrently_and_later_credits_once(
    stack: LocalStack,
) -> None:
    user, token = new_user(stack)
    order = checkout(stack, token)
    paid = stack.pay(order["order_id"]).json()

    def redeliver(_: int) -> int:
        response = stack.request("POST", f"/_local/sandbox/stripe/redeliver/{paid['event_id']}")
        return int(response.json()["webhook_status"])

    with ThreadPoolExecutor(max_workers=10) as pool:
        assert list(pool.map(redeliver, range(10))) == [200] * 10
    wait_status(stack, token, order["order_id"], "paid")
    wait_drained(stack)
    # Later, after the credit: the same event again, and the same payment under new event ids
    # (past SQS's deduplication window, only the ledger can tell they are duplicates).
    assert redeliver(0) == 200
    for _ in range(3):
        body = session_event(order, payment_intent=paid["payment_intent"])
        assert post_webhook(stack, body, sign(body)).status_code == 200
    wait_drained(stack)
    assert balance(stack, token, user) == 10 * UNIT
    assert entry_ids(stack, user) == [f"topup#{order['order_id']}"]


def test_parallel_distinct_deliveries_of_one_payment_credit_once(stack: LocalStack) -> None:
    user, token = new_user(stack)
    order = checkout(stack, token)
    intent = f"pi_{uuid.uuid4().hex[:20]}"
    bodies = [session_event(order, payment_intent=intent) for _ in range(12)]
    bodies += [
        session_event(order, "checkout.session.async_payment_succeeded", payment_intent=intent)
        for _ in range(4)
    ]

    def deliver(body: bytes) -> int:
        return int(post_webhook(stack, body, sign(body)).status_code)

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert set(pool.map(deliver, bodies)) == {200}
    wait_status(stack, token, order["order_id"], "paid")
    wait_drained(stack)
    assert balance(stack, token, user) == 10 * UNIT
    assert entry_ids(stack, user) == [f"topup#{order['order_id']}"]


def test_expired_after_completed_leaves_the_order_paid(stack: LocalStack) -> None:
    user, token, order, _ = paid_order(stack)
    sandbox_event(stack, order, "checkout.session.expired")
    sandbox_event(stack, order, "checkout.session.async_payment_failed")
    wait_drained(stack)
    assert get_order(stack, token, order["order_id"])["status"] == "paid"
    assert balance(stack, token, user) == 10 * UNIT


def test_an_expired_session_expires_its_pending_order(stack: LocalStack) -> None:
    user, token = new_user(stack)
    order = checkout(stack, token)
    sandbox_event(stack, order, "checkout.session.expired")
    wait_status(stack, token, order["order_id"], "expired")
    assert stack.pay(order["order_id"]).json().get("error")  # the session cannot be paid now
    assert balance(stack, token, user) == 0


# ------------------------------------------------------------ signatures and tampering


def test_bad_signatures_are_refused_and_nothing_is_queued(stack: LocalStack) -> None:
    user, token = new_user(stack)
    order = checkout(stack, token)
    body = session_event(order)  # a genuine-looking, correctly priced payment
    attempts = {
        "forged": f"t={int(time.time())},v1={'0' * 64}",
        "wrong_secret": sign(body, secret="whsec_not_ours"),
        "six_minutes_old": sign(body, timestamp=int(time.time()) - 360),
        "other_body": sign(b'{"id": "evt_other"}'),
        "missing": None,
    }
    stack.reset_stats()
    for name, signature in attempts.items():
        response = post_webhook(stack, body, signature)
        assert response.status_code == 400, (name, response.text)
    tampered = body.replace(b'"amount_total": 1000', b'"amount_total": 1')
    assert tampered != body
    assert post_webhook(stack, tampered, attempts["forged"]).status_code == 400
    assert stack.stats()["calls"].get("sqs.SendMessage", 0) == 0  # nothing queued
    assert get_order(stack, token, order["order_id"])["status"] == "pending"
    assert balance(stack, token, user) == 0 and entry_ids(stack, user) == []

    # The very same body, correctly signed, is accepted: the refusals were the signatures'.
    assert post_webhook(stack, body, sign(body)).status_code == 200
    wait_status(stack, token, order["order_id"], "paid")
    assert balance(stack, token, user) == 10 * UNIT


def test_a_verified_event_we_do_not_act_on_is_acknowledged_and_not_queued(
    stack: LocalStack,
) -> None:
    user, token = new_user(stack)
    order = checkout(stack, token)
    unpaid = session_event(order)  # completed, but a delayed method has not paid yet
    unpaid = unpaid.replace(b'"payment_status": "paid"', b'"payment_status": "unpaid"')
    other = json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": "customer.created",
            "data": {"object": {"id": "cus_1", "object": "customer"}},
        }
    ).encode()
    stack.reset_stats()
    for body in (unpaid, other):
        assert post_webhook(stack, body, sign(body)).status_code == 200
    assert stack.stats()["calls"].get("sqs.SendMessage", 0) == 0
    assert get_order(stack, token, order["order_id"])["status"] == "pending"
    assert balance(stack, token, user) == 0


def test_a_checkout_whose_order_update_meets_a_transaction_retries_it(stack: LocalStack) -> None:
    user, token = new_user(stack)
    before = stack.stats()["injected_faults"].get("dynamodb.UpdateItem", 0)
    # The order's pay_url is written by a single-item update, which a transaction on the
    # order (a provider's event already crediting it) refuses with TransactionConflict.
    stack.fault(
        service="dynamodb",
        operation="UpdateItem",
        error_code="TransactionConflictException",
        count=2,
        contains="pay_url",
    )
    try:
        order = checkout(stack, token)
    finally:
        stack.clear_faults()
    assert stack.stats()["injected_faults"]["dynamodb.UpdateItem"] - before == 2
    assert get_order(stack, token, order["order_id"])["pay_url"] == order["pay_url"]
    assert stack.pay(order["order_id"]).json()["webhook_status"] == 200
    wait_status(stack, token, order["order_id"], "paid")
    assert balance(stack, token, user) == 10 * UNIT


def test_a_webhook_that_cannot_be_queued_gets_a_5xx_and_its_retry_credits_once(
    stack: LocalStack,
) -> None:
    user, token = new_user(stack)
    order = checkout(stack, token)
    body = session_event(order)
    stack.fault(
        service="sqs",
        operation="SendMessage",
        error_code="InternalFailure",
        count=-1,
        contains=order["order_id"],
    )
    try:
        refused = post_webhook(stack, body, sign(body))
        assert refused.status_code >= 500
        assert refused.json()["error"]["code"] == "queue_unavailable"
    finally:
        stack.clear_faults()
    assert get_order(stack, token, order["order_id"])["status"] == "pending"
    # The provider delivers the same event again (signed anew), now successfully.
    assert post_webhook(stack, body, sign(body)).status_code == 200
    wait_status(stack, token, order["order_id"], "paid")
    assert balance(stack, token, user) == 10 * UNIT


@pytest.mark.parametrize(
    ("changes", "label"),
    [
        ({"amount_total": 999}, "amount below"),
        ({"amount_total": 1001}, "amount above"),
        ({"amount_total": 100000}, "amount as major units"),
        ({"currency": "eur"}, "currency"),
    ],
)
def test_a_mismatched_payment_disputes_the_order_and_credits_nothing(
    stack: LocalStack, changes: dict[str, Any], label: str
) -> None:
    user, token = new_user(stack)
    order = checkout(stack, token)
    body = session_event(order, **changes)
    assert post_webhook(stack, body, sign(body)).status_code == 200, label
    wait_status(stack, token, order["order_id"], "disputed")
    # The genuine payment arriving afterwards does not credit a disputed order either.
    assert stack.pay(order["order_id"]).json()["webhook_status"] == 200
    wait_drained(stack)
    assert get_order(stack, token, order["order_id"])["status"] == "disputed"
    assert balance(stack, token, user) == 0 and entry_ids(stack, user) == []


# ------------------------------------------------------------ refunds and disputes


def test_a_refund_reverses_the_credit_once(stack: LocalStack) -> None:
    user, token, order, _ = paid_order(stack)
    refund = sandbox_event(stack, order, "charge.refunded")
    wait_status(stack, token, order["order_id"], "refunded")
    again = stack.request("POST", f"/_local/sandbox/stripe/redeliver/{refund['event_id']}")
    assert again.json()["webhook_status"] == 200  # the refund event again
    sandbox_event(stack, order, "charge.dispute.created")  # and a dispute of the same charge
    wait_drained(stack)
    refunded = get_order(stack, token, order["order_id"])
    assert (refunded["status"], refunded["refunded_money"]) == ("refunded", "10.00")
    assert balance(stack, token, user) == 0
    assert entry_ids(stack, user) == [
        f"reversal#{order['order_id']}#1000",
        f"topup#{order['order_id']}",
    ]
    ledger = stack.request("GET", "/ledger", token=token).json()["items"]
    assert ledger[0]["kind"] == "reversal" and ledger[0]["delta"] == -10 * UNIT


def test_a_dispute_is_matched_by_payment_intent_and_reverses_the_credit(
    stack: LocalStack,
) -> None:
    user, token, order, _ = paid_order(stack)
    sandbox_event(stack, order, "charge.dispute.created")
    wait_status(stack, token, order["order_id"], "disputed")
    assert balance(stack, token, user) == 0
    assert f"reversal#{order['order_id']}#dispute" in entry_ids(stack, user)


# ------------------------------------------------------------ crashes and poison


def test_a_crash_between_queue_and_credit_ends_with_one_credit(stack: LocalStack) -> None:
    user, token = new_user(stack)
    order = checkout(stack, token)
    stack.reset_stats()
    # Every attempt PynamoDB makes within one invocation (1 + 3 retries) fails: the credit
    # handler raises, the record is reported failed, and SQS delivers it again.
    stack.fault(
        service="dynamodb",
        operation="TransactWriteItems",
        error_code="InternalServerError",
        count=4,
        contains=order["order_id"],
    )
    try:
        assert stack.pay(order["order_id"]).json()["webhook_status"] == 200
        wait_status(stack, token, order["order_id"], "paid")
    finally:
        stack.clear_faults()
    stats = stack.stats()
    assert stats["injected_faults"].get("dynamodb.TransactWriteItems", 0) >= 1
    assert stats["pollers"]["CreditPaymentFunction/CreditQueueEvents"]["failed"] >= 1
    wait_drained(stack)
    assert balance(stack, token, user) == 10 * UNIT
    assert entry_ids(stack, user) == [f"topup#{order['order_id']}"]


def test_a_credit_whose_batch_is_redelivered_after_it_ran_credits_once(
    stack: LocalStack,
) -> None:
    user, token = new_user(stack)
    order = checkout(stack, token)
    stack.fault(poller="CreditPaymentFunction", die_after_invoke=1)
    try:
        stack.pay(order["order_id"])
        wait_status(stack, token, order["order_id"], "paid")
        wait_drained(stack)
    finally:
        stack.clear_faults()
    assert balance(stack, token, user) == 10 * UNIT
    assert entry_ids(stack, user) == [f"topup#{order['order_id']}"]


def test_an_always_failing_message_lands_in_the_dlq(stack: LocalStack) -> None:
    sqs = stack.boto3_client("sqs")
    marker = f"poison-{uuid.uuid4().hex}"
    sqs.send_message(
        QueueUrl=stack.queue_url("CreditQueue"),
        MessageBody=json.dumps({"not": "a payment event", "marker": marker}),
        MessageGroupId=marker,
        MessageDeduplicationId=marker,
    )

    def in_dlq() -> bool:
        received = sqs.receive_message(
            QueueUrl=stack.queue_url("CreditDLQ"),
            MaxNumberOfMessages=10,
            VisibilityTimeout=0,
            WaitTimeSeconds=1,
        )
        return any(marker in m["Body"] for m in received.get("Messages", []))

    wait_for(in_dlq, timeout=90, interval=0.5, message="the poison message in the DLQ")
    wait_drained(stack)


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"amount": 0, "method": "stripe"}, "invalid_amount"),
        ({"amount": -1, "method": "stripe"}, "invalid_amount"),
        ({"amount": 1.5, "method": "stripe"}, "invalid_amount"),
        ({"amount": "10", "method": "stripe"}, "invalid_amount"),
        ({"amount": True, "method": "stripe"}, "invalid_amount"),
        ({"amount": 10_001, "method": "stripe"}, "invalid_amount"),
        ({"amount": 10**40, "method": "stripe"}, "invalid_amount"),
        ({"method": "stripe"}, "invalid_amount"),
        ({"amount": 10, "method": "paypal"}, "method_unavailable"),
        ({"amount": 10, "method": ""}, "invalid_request"),
        ({"amount": 10}, "invalid_request"),
        ({"amount": 10, "method": "stripe", "pay_money": "0.01"}, "invalid_request"),
        ({"amount": 10, "method": "stripe", "price": "0.01"}, "invalid_request"),
        ({"amount": 10, "method": "stripe", "unit_price": "0.01"}, "invalid_request"),
        ({"amount": 10, "method": "stripe", "currency": "JPY"}, "invalid_request"),
        ({"amount": 10, "method": "stripe", "quota": 10**12}, "invalid_request"),
        ({"amount": 10, "method": "stripe", "product_id": "prod_pro"}, "invalid_request"),
        ({"amount": 10, "method": "stripe", "channel": "alipay"}, "invalid_request"),
    ],
)
def test_bad_checkouts_are_refused_and_write_nothing(
    stack: LocalStack, body: dict[str, Any], code: str
) -> None:
    user, token = new_user(stack)
    response = stack.request("POST", "/checkout", token=token, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
    assert orders_of(stack, user) == []


def test_checkout_without_an_account_or_body_writes_nothing(stack: LocalStack) -> None:
    user = f"user-{uuid.uuid4().hex[:12]}"
    token = stack.token(user)
    response = stack.request(
        "POST", "/checkout", token=token, json={"amount": 10, "method": "stripe"}
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "account_not_found"
    not_json = stack.request("POST", "/checkout", token=token, data="amount=10")
    assert not_json.status_code == 400
    assert orders_of(stack, user) == []


def test_orders_are_private_and_paginated(stack: LocalStack) -> None:
    _owner, owner_token = new_user(stack)
    _, other_token = new_user(stack)
    first = checkout(stack, owner_token, amount=5)
    second = checkout(stack, owner_token, amount=20)
    stolen = stack.request("GET", f"/topups/{first['order_id']}", token=other_token)
    assert stolen.status_code == 404 and stolen.json()["error"]["code"] == "not_found"
    for missing in ("ord_doesnotexist", "x" * 300):
        assert stack.request("GET", f"/topups/{missing}", token=owner_token).status_code == 404
    time.sleep(stack.index_lag)  # the list reads the by_user index, which lags its writes
    assert stack.request("GET", "/topups", token=other_token).json()["items"] == []

    page = stack.request("GET", "/topups?limit=1", token=owner_token).json()
    assert [o["order_id"] for o in page["items"]] == [second["order_id"]]  # newest first
    assert page["next_cursor"]
    rest = stack.request(
        "GET", f"/topups?limit=1&cursor={page['next_cursor']}", token=owner_token
    ).json()
    assert [o["order_id"] for o in rest["items"]] == [first["order_id"]]
    hijack = stack.request("GET", f"/topups?cursor={page['next_cursor']}", token=other_token)
    assert hijack.status_code == 400
    assert stack.request("GET", "/topups?limit=0", token=owner_token).status_code == 400


def test_an_unconfigured_stripe_is_not_offered_and_cannot_be_used() -> None:
    with LocalStack("stripe-unconfigured") as bare:
        bare.start(env={"STRIPE_WEBHOOK_SECRET": ""})
        user, token = new_user(bare)
        methods = bare.request("GET", "/topup/options", token=token).json()["methods"]
        assert "stripe" not in {m["id"] for m in methods}
        response = bare.request(
            "POST", "/checkout", token=token, json={"amount": 10, "method": "stripe"}
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "method_unavailable"
        assert orders_of(bare, user) == []
        body = b'{"id": "evt_1", "object": "event", "type": "checkout.session.completed"}'
        assert post_webhook(bare, body, sign(body)).status_code == 400


# ------------------------------------------------------------ admin completion


def test_admin_completes_a_topup_once(stack: LocalStack) -> None:
    user, token = new_user(stack)
    order = checkout(stack, token)
    path = f"/admin/topups/{order['order_id']}/complete"
    assert stack.request("POST", path, token=token).status_code == 403
    admin = stack.token(f"admin-{uuid.uuid4().hex[:8]}", admin=True)

    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(lambda _: stack.request("POST", path, token=admin), range(6)))
    assert {r.status_code for r in responses} == {200}
    assert {r.json()["status"] for r in responses} == {"paid"}
    assert len({r.json()["paid_at"] for r in responses}) == 1  # one credit, the rest unchanged
    # The provider's own webhook arriving later changes nothing.
    stack.pay(order["order_id"])
    wait_drained(stack)
    assert balance(stack, token, user) == 10 * UNIT
    assert entry_ids(stack, user) == [f"topup#{order['order_id']}"]
    missing = stack.request("POST", "/admin/topups/ord_nothing_here/complete", token=admin)
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "changes", [{"amount_total": 999}, {"currency": "eur"}], ids=["amount", "currency"]
)
def test_admin_completes_a_mismatched_payment_once_at_the_orders_quota(
    stack: LocalStack, changes: dict[str, Any]
) -> None:
    """The provider took another amount (or currency) than the order's: disputed, nothing
    credited; an operator who checked the payment completes it, at the order's own quota and
    its inviter's rebate, once however many admins press at once."""
    api, tables = Api(stack), Tables(stack)
    inviter = api.new_user(prefix="inviter")
    user = api.new_user(referral_code=inviter.account()["aff_code"])
    order = user.checkout("stripe", 10)
    paid = session_event(order, **changes)
    assert post_stripe(api, paid).status_code == 200
    drain(stack)
    disputed = user.order(order["order_id"])
    assert disputed["status"] == "disputed" and disputed["failure_reason"].startswith("mismatch:")
    assert tables.ledger(user.user_id) == [] and tables.ledger(inviter.user_id) == []

    path = f"/admin/topups/{order['order_id']}/complete"
    admin = api.admin_token()
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda _: stack.request("POST", path, token=admin), range(8)))
    assert {r.status_code for r in replies} == {200}, [r.text for r in replies]
    assert {r.json()["status"] for r in replies} == {"paid"}
    assert len({r.json()["paid_at"] for r in replies}) == 1  # one credit, the rest unchanged
    # The provider delivers the mismatched event again: a paid order stays as it is.
    assert post_stripe(api, paid).status_code == 200
    drain(stack)
    again = stack.request("POST", path, token=admin)
    assert again.status_code == 200 and again.json()["paid_at"] == replies[0].json()["paid_at"]

    rebate = order["quota"] // 10  # referral.rebate_percent 10 in settings/local.json
    assert order["quota"] == 10 * UNIT and user.account()["quota"] == order["quota"]
    assert [(e["entry_id"], e["delta"]) for e in tables.ledger(user.user_id)] == [
        (f"topup#{order['order_id']}", order["quota"])
    ]
    assert [(e["entry_id"], e["delta"]) for e in tables.ledger(inviter.user_id)] == [
        (f"referral_reward#{order['order_id']}", rebate)
    ]
    assert inviter.account()["aff_quota"] == rebate
    for account in (user, inviter):
        assert check_stack_account(stack, account.user_id) == []


# ------------------------------------------------------------ sample events (Invoke API)


def test_sample_events_run_through_the_invoke_api(stack: LocalStack) -> None:
    user, token = new_user(stack)
    event = json.loads((EVENTS / "create_checkout_post.json").read_text())
    event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = user
    created = stack.invoke("CreateCheckoutFunction", event)
    assert created["statusCode"] == 201
    order = json.loads(created["body"])
    options = json.loads((EVENTS / "create_checkout_options.json").read_text())
    assert stack.invoke("CreateCheckoutFunction", options)["statusCode"] == 200

    # The sample webhook, re-signed now for this order (its stored signature is long stale).
    webhook = json.loads((EVENTS / "payment_webhook_stripe.json").read_text())
    stale = stack.invoke("PaymentWebhookFunction", webhook)
    assert stale["statusCode"] == 400
    body = webhook["body"].replace("ord_SampleOrder0000000000000", order["order_id"])
    webhook["body"] = body
    webhook["headers"]["stripe-signature"] = sign(body.encode())
    assert stack.invoke("PaymentWebhookFunction", webhook)["statusCode"] == 200
    wait_status(stack, token, order["order_id"], "paid")

    # The SQS sample, for another order, straight into the credit function.
    second = checkout(stack, token)
    sqs_event = json.loads((EVENTS / "credit_payment_sqs.json").read_text())
    record = sqs_event["Records"][0]
    message = json.loads(record["body"])
    message.update(order_id=second["order_id"], event_id=f"evt_{uuid.uuid4().hex}")
    record["body"] = json.dumps(message)
    assert stack.invoke("CreditPaymentFunction", sqs_event) == {"batchItemFailures": []}
    wait_status(stack, token, second["order_id"], "paid")

    admin_event = json.loads((EVENTS / "admin_complete_topup.json").read_text())
    third = checkout(stack, token)
    admin_event["pathParameters"]["order_id"] = third["order_id"]
    admin_event["rawPath"] = f"/admin/topups/{third['order_id']}/complete"
    admin_event["requestContext"]["http"]["path"] = admin_event["rawPath"]
    completed = stack.invoke("AdminFunction", admin_event)
    assert completed["statusCode"] == 200 and json.loads(completed["body"])["status"] == "paid"
    assert balance(stack, token, user) == 30 * UNIT
