"""Refunds and disputes as the providers really send them, end to end on the local stack.

Each provider's sandbox refunds the way the provider does: Stripe sends charge.refunded with the
charge's cumulative `amount_refunded`; Creem one refund.created per refund (its own id and
amount); Waffo one REFUND_NOTIFICATION per refund, ORDER_PARTIALLY_REFUNDED until the whole
amount came back. Notifications are repeated and delivered out of order on demand (recorded
without sending, sent later). Whatever the order and repetition, the reversed quota is
floor(quota x R / P) after refunds totalling R of P, all of it at R = P, once.

Also: the inviter's rebate goes back in the same proportion, from quota once it was transferred;
N concurrent deliveries of one refund take back once; one poisoned credit record does not hold
back another order's credit; a refund or dispute that matches no order is retried and kept in
the credit DLQ (a stack of its own with immediate retries). On a stack whose settings pay
first-order bonuses: a full refund of the first order takes them back too, from the inviter's
quota where a transfer emptied aff_quota.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import Api, Tables, User, drain, pay, post_stripe, stripe_event
from tests.support.payments import dlq_bodies, redeliver, sandbox_refund
from tests.support.reconcile import assert_reconciled, check_stack_account
from tests.support.stack import LocalStack, wait_for

UNIT = 500_000
ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
TEMPLATE = ROOT / "infra" / "template.yaml"

# The two halves of each provider's order (minor units) under settings/local.json: a 10-unit
# order for Stripe and Waffo (10.00 USD), Creem's starter pack (9.99 USD).
HALVES = {"stripe": (500, 500), "creem": (499, 500), "waffo": (500, 500)}
QUOTA = 5_000_000


def share(quota: int, refunded: int, paid: int) -> int:
    return quota if refunded >= paid else quota * refunded // paid


@pytest.fixture
def api(stack: LocalStack) -> Api:
    return Api(stack)


def paid_order(api: Api, user: User, method: str) -> dict[str, Any]:
    order = user.checkout(method, 10)
    result = pay(api, order["order_id"])
    assert result["webhook_status"] == 200, result
    drain(api.stack)
    assert user.order(order["order_id"])["status"] == "paid"
    return order


def reversals(tables: Tables, user_id: str, order_id: str) -> dict[str, int]:
    return {
        entry["entry_id"]: entry["delta"]
        for entry in tables.ledger(user_id)
        if entry["entry_id"].startswith(f"reversal#{order_id}#")
    }


def assert_balanced(tables: Tables, user: User) -> dict[str, Any]:
    account = user.account()
    assert tables.sums(user.user_id) == {
        "quota": account["quota"],
        "aff_quota": account["aff_quota"],
    }
    return account


# ---------------------------------------------------------------- partial refunds per provider


@pytest.mark.parametrize("provider", ["stripe", "creem", "waffo"])
def test_half_then_all_reverses_in_proportion_and_repeats_change_nothing(
    api: Api, provider: str
) -> None:
    tables = Tables(api.stack)
    user = api.new_user()
    order = paid_order(api, user, provider)
    paid = int(Decimal(order["pay_money"]) * 100)
    half, rest = HALVES[provider]

    first = sandbox_refund(api.stack, order, half)
    drain(api.stack)
    current = user.order(order["order_id"])
    assert current["status"] == "paid"
    assert current["refunded_money"] == f"{half // 100}.{half % 100:02d}"
    assert user.account()["quota"] == QUOTA - share(QUOTA, half, paid)

    # The same notification again, in sequence and concurrently: nothing more.
    for _ in range(2):
        assert redeliver(api.stack, first) == 200
    with ThreadPoolExecutor(max_workers=6) as pool:
        assert set(pool.map(lambda _: redeliver(api.stack, first), range(6))) == {200}
    drain(api.stack)
    assert user.account()["quota"] == QUOTA - share(QUOTA, half, paid)

    sandbox_refund(api.stack, order, rest)
    drain(api.stack)
    assert redeliver(api.stack, first) == 200  # the older, smaller one after the full one
    drain(api.stack)
    refunded = user.order(order["order_id"])
    assert (refunded["status"], refunded["refunded_money"]) == ("refunded", order["pay_money"])
    assert assert_balanced(tables, user)["quota"] == 0
    steps = reversals(tables, user.user_id, order["order_id"])
    assert steps == {
        f"reversal#{order['order_id']}#{half}": -share(QUOTA, half, paid),
        f"reversal#{order['order_id']}#{paid}": -(QUOTA - share(QUOTA, half, paid)),
    }


@pytest.mark.parametrize("provider", ["stripe", "creem", "waffo"])
def test_the_half_refund_delivered_after_the_full_one_changes_nothing(
    api: Api, provider: str
) -> None:
    tables = Tables(api.stack)
    user = api.new_user()
    order = paid_order(api, user, provider)
    paid = int(Decimal(order["pay_money"]) * 100)
    half, rest = HALVES[provider]

    held = sandbox_refund(api.stack, order, half, deliver=False)  # sent late, below
    sandbox_refund(api.stack, order, rest)
    drain(api.stack)
    if provider == "creem":
        # Creem's refunds carry their own amounts: the second one alone came back so far.
        assert user.order(order["order_id"])["status"] == "paid"
        assert user.account()["quota"] == QUOTA - share(QUOTA, rest, paid)
    else:
        # Stripe's total and Waffo's "fully refunded" say all of it came back.
        assert user.order(order["order_id"])["status"] == "refunded"
        assert user.account()["quota"] == 0
    for _ in range(3):
        assert redeliver(api.stack, held) == 200  # late, then repeated
    drain(api.stack)
    refunded = user.order(order["order_id"])
    assert (refunded["status"], refunded["refunded_money"]) == ("refunded", order["pay_money"])
    assert assert_balanced(tables, user)["quota"] == 0
    assert sum(reversals(tables, user.user_id, order["order_id"]).values()) == -QUOTA


def test_refunds_of_an_order_partly_used_take_the_balance_below_zero(api: Api) -> None:
    tables = Tables(api.stack)
    user = api.new_user()
    order = paid_order(api, user, "stripe")
    charge = {
        "action": "charge",
        "request_id": uuid.uuid4().hex,
        "user_id": user.user_id,
        "model": "dall-e-3",  # a fixed price: 0.04 units
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }
    spent = int(api.meter(charge)["quota"])
    sandbox_refund(api.stack, order, 250)
    sandbox_refund(api.stack, order)
    drain(api.stack)
    assert assert_balanced(tables, user)["quota"] == -spent  # the usage already happened


# ---------------------------------------------------------------- the inviter's rebate


def test_transfer_then_refund_leaves_the_inviter_as_before_the_rebate(api: Api) -> None:
    tables = Tables(api.stack)
    inviter = api.new_user(prefix="inviter")
    before = inviter.account()
    invitee = api.new_user(referral_code=before["aff_code"], prefix="invitee")
    order = paid_order(api, invitee, "stripe")
    rebate = QUOTA // 10  # referral.rebate_percent 10 in settings/local.json
    assert inviter.account()["aff_quota"] == rebate

    moved = inviter.call(
        "POST",
        "/referral/transfer",
        json={"quota": rebate},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert moved.status_code == 200, moved.text
    assert moved.json() == {"aff_quota": 0, "quota": before["quota"] + rebate}

    sandbox_refund(api.stack, order, 500)  # half: half of the rebate goes back
    drain(api.stack)
    halfway = assert_balanced(tables, inviter)
    assert (halfway["quota"], halfway["aff_quota"]) == (before["quota"] + rebate // 2, 0)
    assert halfway["aff_history_quota"] == rebate // 2

    sandbox_refund(api.stack, order)  # the rest
    drain(api.stack)
    after = assert_balanced(tables, inviter)
    assert (after["quota"], after["aff_quota"], after["aff_history_quota"]) == (
        before["quota"],
        before["aff_quota"],
        before["aff_history_quota"],
    )
    assert assert_balanced(tables, invitee)["quota"] == 0
    clawbacks = sorted(
        entry["entry_id"]
        for entry in tables.ledger(inviter.user_id)
        if entry["entry_id"].startswith("referral_clawback#")
    )
    assert clawbacks == [
        f"referral_clawback#{order['order_id']}#1000#quota",
        f"referral_clawback#{order['order_id']}#500#quota",
    ]


def test_a_rebate_still_in_aff_quota_is_clawed_back_from_it_in_proportion(api: Api) -> None:
    tables = Tables(api.stack)
    inviter = api.new_user(prefix="inviter")
    invitee = api.new_user(referral_code=inviter.account()["aff_code"], prefix="invitee")
    order = paid_order(api, invitee, "waffo")
    sandbox_refund(api.stack, order, 300)  # 3.00 of 10.00
    drain(api.stack)
    rebate = QUOTA // 10
    account = assert_balanced(tables, inviter)
    assert account["aff_quota"] == rebate - rebate * 300 // 1000
    assert (account["quota"], account["aff_history_quota"]) == (0, account["aff_quota"])


# ---------------------------------------------------------------- first-order bonuses

INVITEE_BONUS, INVITER_BONUS = 1_000_000, 2_000_000


@pytest.fixture(scope="module")
def with_bonuses(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack whose settings pay both first-order bonuses (settings/local.json pays none)."""
    document = json.loads((ROOT / "settings" / "local.json").read_text())
    document["referral"].update(invitee_bonus=INVITEE_BONUS, inviter_bonus=INVITER_BONUS)
    path = tmp_path_factory.mktemp("settings") / "referral-bonuses.json"
    path.write_text(json.dumps(document))
    local = LocalStack("referral-bonuses")
    local.start(settings=path, env={"LOCAL_SCHEDULES": "0"})
    try:
        yield local
        assert_reconciled(local)
    finally:
        local.stop()


def deltas(tables: Tables, user_id: str) -> dict[str, tuple[str, int]]:
    return {e["entry_id"]: (e["balance"], e["delta"]) for e in tables.ledger(user_id)}


def test_a_refunded_first_order_takes_its_bonuses_back_from_quota_once_transferred(
    with_bonuses: LocalStack,
) -> None:
    api, tables = Api(with_bonuses), Tables(with_bonuses)
    inviter = api.new_user(prefix="inviter")
    invitee = api.new_user(referral_code=inviter.account()["aff_code"], prefix="invitee")
    order = paid_order(api, invitee, "stripe")
    oid, rebate = order["order_id"], QUOTA // 10  # referral.rebate_percent 10
    # The first paid order paid both bonuses with its rebate, in its credit.
    assert assert_balanced(tables, invitee)["quota"] == QUOTA + INVITEE_BONUS
    rewarded = assert_balanced(tables, inviter)
    assert (rewarded["quota"], rewarded["aff_quota"], rewarded["aff_history_quota"]) == (
        0,
        rebate + INVITER_BONUS,
        rebate + INVITER_BONUS,
    )

    # Half of the rewards moved to the balance: aff_quota keeps 1 500 000.
    moved = inviter.call(
        "POST",
        "/referral/transfer",
        json={"quota": 1_000_000},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert moved.status_code == 200, moved.text
    assert moved.json() == {"aff_quota": rebate + INVITER_BONUS - 1_000_000, "quota": 1_000_000}

    sandbox_refund(with_bonuses, order, 500)  # half: half the rebate, the bonuses stay
    drain(with_bonuses)
    halfway = assert_balanced(tables, inviter)
    assert (halfway["quota"], halfway["aff_quota"]) == (1_000_000, 1_250_000)
    assert assert_balanced(tables, invitee)["quota"] == QUOTA // 2 + INVITEE_BONUS

    full = sandbox_refund(with_bonuses, order)  # the rest: all of it, the bonuses too
    drain(with_bonuses)
    assert redeliver(with_bonuses, full) == 200  # and the provider sends it again
    drain(with_bonuses)
    assert invitee.order(oid)["status"] == "refunded"
    # The rest of the rebate (250 000) and 1 000 000 of the inviter's bonus come from what is
    # left in aff_quota; the bonus's other 1 000 000 was transferred: it comes from quota.
    after = assert_balanced(tables, inviter)
    assert (after["quota"], after["aff_quota"], after["aff_history_quota"]) == (0, 0, 0)
    bonus = f"signup_bonus_reversal#invitee#{invitee.user_id}"
    ledger = deltas(tables, inviter.user_id)
    transfers = {k: v for k, v in ledger.items() if k.startswith("referral_transfer#")}
    assert sorted(transfers.values()) == [("aff_quota", -1_000_000), ("quota", 1_000_000)]
    assert {k: v for k, v in ledger.items() if k not in transfers} == {
        f"referral_reward#{oid}": ("aff_quota", rebate),
        f"signup_bonus#invitee#{invitee.user_id}": ("aff_quota", INVITER_BONUS),
        f"referral_clawback#{oid}#500": ("aff_quota", -rebate // 2),
        f"referral_clawback#{oid}#1000": ("aff_quota", -rebate // 2),
        bonus: ("aff_quota", -1_000_000),
        f"{bonus}#quota": ("quota", -1_000_000),
    }
    assert assert_balanced(tables, invitee)["quota"] == 0
    assert deltas(tables, invitee.user_id) == {
        f"topup#{oid}": ("quota", QUOTA),
        f"signup_bonus#{invitee.user_id}": ("quota", INVITEE_BONUS),
        f"reversal#{oid}#500": ("quota", -QUOTA // 2),
        f"reversal#{oid}#1000": ("quota", -QUOTA // 2),
        f"signup_bonus_reversal#{invitee.user_id}": ("quota", -INVITEE_BONUS),
    }
    for user in (inviter, invitee):
        assert check_stack_account(with_bonuses, user.user_id) == []


# ---------------------------------------------------------------- one effect under concurrency


def test_concurrent_deliveries_of_one_stripe_refund_take_back_once(api: Api) -> None:
    tables = Tables(api.stack)
    user = api.new_user()
    order = paid_order(api, user, "stripe")
    held = sandbox_refund(api.stack, order, 400, deliver=False)
    # The same refund as Stripe reports it under other event ids (its total so far: 4.00).
    charge = {
        "id": f"ch_{uuid.uuid4().hex[:24]}",
        "object": "charge",
        "amount": 1000,
        "amount_refunded": 400,
        "refunded": False,
        "currency": "usd",
        "metadata": {"order_id": order["order_id"]},
        "payment_intent": f"pi_{uuid.uuid4().hex[:24]}",
    }
    bodies = [stripe_event("charge.refunded", charge) for _ in range(6)]

    def deliver(index: int) -> int:
        if index < 8:
            return redeliver(api.stack, held)
        return post_stripe(api, bodies[index - 8]).status_code

    with ThreadPoolExecutor(max_workers=14) as pool:
        assert set(pool.map(deliver, range(14))) == {200}
    drain(api.stack)
    assert reversals(tables, user.user_id, order["order_id"]) == {
        f"reversal#{order['order_id']}#400": -QUOTA * 400 // 1000
    }
    assert assert_balanced(tables, user)["quota"] == QUOTA - QUOTA * 400 // 1000


@pytest.mark.parametrize("provider", ["creem", "waffo"])
def test_concurrent_replays_of_one_refund_notification_take_back_once(
    api: Api, provider: str
) -> None:
    tables = Tables(api.stack)
    user = api.new_user()
    order = paid_order(api, user, provider)
    held = sandbox_refund(api.stack, order, 100, deliver=False)
    with ThreadPoolExecutor(max_workers=10) as pool:
        assert set(pool.map(lambda _: redeliver(api.stack, held), range(10))) == {200}
    drain(api.stack)
    paid = int(Decimal(order["pay_money"]) * 100)
    assert list(reversals(tables, user.user_id, order["order_id"]).values()) == [
        -share(QUOTA, 100, paid)
    ]
    assert assert_balanced(tables, user)["quota"] == QUOTA - share(QUOTA, 100, paid)


def sqs_record(body: str, group: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((EVENTS / "credit_payment_sqs.json").read_text())[
        "Records"
    ][0]
    record = {**record, "messageId": str(uuid.uuid4()), "body": body}
    record["attributes"] = {**record["attributes"], "MessageGroupId": group}
    return record


def test_parallel_invocations_with_one_refund_record_take_back_once(api: Api) -> None:
    """The credit function itself, N times at once on the same record (a redelivery racing
    the first delivery): the conditional step applies once."""
    tables = Tables(api.stack)
    user = api.new_user()
    order = paid_order(api, user, "creem")
    body = json.dumps(
        {
            "provider": "creem",
            "event_id": f"evt_{uuid.uuid4().hex}",
            "type": "refunded",
            "order_id": order["order_id"],
            "amount": "3.33",
            "currency": "USD",
            "refund_id": f"ref_{uuid.uuid4().hex[:12]}",
            "cumulative": False,
            "full_refund": False,
        }
    )
    event = {"Records": [sqs_record(body, order["order_id"])]}
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: api.invoke("CreditPaymentFunction", event), range(8)))
    assert all(result == ({"batchItemFailures": []}, False) for result in results), results
    assert list(reversals(tables, user.user_id, order["order_id"]).values()) == [
        -share(QUOTA, 333, 999)
    ]
    assert user.order(order["order_id"])["refunded_money"] == "3.33"


# ---------------------------------------------------------------- message groups are independent


def test_a_poisoned_record_does_not_hold_back_another_orders_credit(api: Api) -> None:
    user = api.new_user()
    blocked, other = user.checkout("stripe", 5), user.checkout("stripe", 7)
    session = json.loads(
        json.loads((EVENTS / "credit_payment_sqs.json").read_text())["Records"][0]["body"]
    )

    def paid_body(order: dict[str, Any]) -> str:
        return json.dumps(
            {
                **session,
                "event_id": f"evt_{uuid.uuid4().hex}",
                "order_id": order["order_id"],
                "amount": order["pay_money"],
                "provider_payment_id": f"pi_{uuid.uuid4().hex[:20]}",
            }
        )

    poison = sqs_record("not a payment event", blocked["order_id"])
    after_poison = sqs_record(paid_body(blocked), blocked["order_id"])  # same group: must wait
    independent = sqs_record(paid_body(other), other["order_id"])  # another group: goes on
    result, failed = api.invoke(
        "CreditPaymentFunction", {"Records": [poison, after_poison, independent]}
    )
    assert not failed
    assert result == {
        "batchItemFailures": [
            {"itemIdentifier": poison["messageId"]},
            {"itemIdentifier": after_poison["messageId"]},
        ]
    }
    # Credited in this very batch, not on a retry.
    assert user.order(other["order_id"])["status"] == "paid"
    assert user.order(blocked["order_id"])["status"] == "pending"
    assert user.account()["quota"] == 7 * UNIT


# ---------------------------------------------------------------- nothing matched: the DLQ


@pytest.fixture(scope="module")
def quick_retries() -> Iterator[LocalStack]:
    """A stack whose failed credit records come back at once, so the DLQ is reached fast."""
    local = LocalStack("refunds-dlq")
    local.start(env={"LOCAL_RETRY_DELAY_SECONDS": "0", "LOCAL_SCHEDULES": "0"})
    try:
        yield local
    finally:
        local.stop()


def in_dlq(stack: LocalStack, marker: str) -> bool:
    return any(marker in body for body in dlq_bodies(stack))


def test_the_credit_dlq_has_its_alarm() -> None:
    template = TEMPLATE.read_text()
    alarm = template.split("  CreditDLQAlarm:", 1)[1].split("\n\n", 1)[0]
    assert "!GetAtt CreditDLQ.QueueName" in alarm and "AlarmActions" in alarm


def test_an_unmatched_dispute_is_retried_and_kept_in_the_dlq(quick_retries: LocalStack) -> None:
    api = Api(quick_retries)
    intent = f"pi_{uuid.uuid4().hex[:24]}"
    dispute = stripe_event(
        "charge.dispute.created",
        {
            "id": f"dp_{uuid.uuid4().hex[:20]}",
            "object": "dispute",
            "amount": 1000,
            "currency": "usd",
            "payment_intent": intent,
            "reason": "fraudulent",
            "status": "needs_response",
        },
    )
    assert post_stripe(api, dispute).status_code == 200  # acknowledged: it is queued
    wait_for(lambda: in_dlq(quick_retries, intent), timeout=90, interval=0.5, message="the DLQ")


def test_a_dispute_of_an_order_completed_by_hand_lands_in_the_dlq(
    quick_retries: LocalStack,
) -> None:
    api = Api(quick_retries)
    user = api.new_user()
    order = user.checkout("stripe", 10)
    completed = api.call("POST", f"/admin/topups/{order['order_id']}/complete", api.admin_token())
    assert completed.status_code == 200 and completed.json()["status"] == "paid"
    # The charge the user made elsewhere is disputed: its payment intent names no order.
    intent = f"pi_{uuid.uuid4().hex[:24]}"
    dispute = stripe_event(
        "charge.dispute.created",
        {
            "id": "dp_x",
            "object": "dispute",
            "amount": 1000,
            "currency": "usd",
            "payment_intent": intent,
        },
    )
    assert post_stripe(api, dispute).status_code == 200
    wait_for(lambda: in_dlq(quick_retries, intent), timeout=90, interval=0.5, message="the DLQ")
    assert user.order(order["order_id"])["status"] == "paid"  # for an operator to decide


def test_a_partial_refund_before_its_payment_is_retried_then_kept_in_the_dlq(
    quick_retries: LocalStack,
) -> None:
    """Its payment's event still queued: the refund is retried, not lost; here the payment
    never comes, so it ends in the DLQ, for an operator."""
    api = Api(quick_retries)
    user = api.new_user()
    order = user.checkout("stripe", 10)
    charge = {
        "id": f"ch_{uuid.uuid4().hex[:24]}",
        "object": "charge",
        "amount": 1000,
        "amount_refunded": 300,
        "refunded": False,
        "currency": "usd",
        "metadata": {"order_id": order["order_id"]},
        "payment_intent": f"pi_{uuid.uuid4().hex[:24]}",
    }
    body = stripe_event("charge.refunded", charge)
    event_id = json.loads(body)["id"]
    assert post_stripe(api, body).status_code == 200
    wait_for(lambda: in_dlq(quick_retries, event_id), timeout=90, interval=0.5, message="DLQ")
    assert user.order(order["order_id"])["status"] == "pending"
    assert user.account()["quota"] == 0


def test_a_payment_for_an_order_we_do_not_have_is_kept_in_the_dlq(
    quick_retries: LocalStack,
) -> None:
    api = Api(quick_retries)
    ghost = f"ord_{uuid.uuid4().hex[:24]}"
    body = stripe_event(
        "checkout.session.completed",
        {
            "id": f"cs_test_{uuid.uuid4().hex}",
            "object": "checkout.session",
            "payment_status": "paid",
            "amount_total": 1000,
            "currency": "usd",
            "client_reference_id": ghost,
            "metadata": {"order_id": ghost},
            "payment_intent": f"pi_{uuid.uuid4().hex[:24]}",
        },
    )
    assert post_stripe(api, body).status_code == 200
    wait_for(lambda: in_dlq(quick_retries, ghost), timeout=90, interval=0.5, message="the DLQ")
