"""Referral rules on the embedded AWS: rounding, an inactive inviter earns nothing, bonuses are
paid once, on the first paid order, even when two orders are credited at the same moment;
refunds claw the rebate back in proportion (from quota where aff_quota no longer has it) and,
once all of an order came back, the bonuses it paid."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
from billing import clock, ledger
from billing.errors import InsufficientAffQuota
from billing.models import Account, LedgerEntry, Order
from billing.payments import crediting
from billing.payments.crediting import Outcome
from billing.payments.providers.base import EventType, PaymentEvent
from billing.referral import signup
from billing.referral.rewards import rebate_for, transfer

from tests.support.embedded_tables import embedded_tables

ROOT = Path(__file__).resolve().parents[2]
QUOTA = 3_333_333
INVITEE_BONUS = 1_000
INVITER_BONUS = 2_000
MIN_TRANSFER = 100


@pytest.fixture(scope="module", autouse=True)
def tables() -> Iterator[None]:
    with embedded_tables():
        yield


@pytest.fixture(autouse=True)
def bonus_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    document = json.loads((ROOT / "settings" / "local.json").read_text())
    document["referral"].update(
        invitee_bonus=INVITEE_BONUS, inviter_bonus=INVITER_BONUS, min_transfer=MIN_TRANSFER
    )
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(document))
    monkeypatch.setenv("SETTINGS_FILE", str(path))
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "QuotaTopupTest")


def invited_pair() -> tuple[str, str]:
    inviter = f"a-{uuid.uuid4().hex[:10]}"
    invitee = f"b-{uuid.uuid4().hex[:10]}"
    code = signup.create_account(inviter, None)[0].aff_code
    signup.create_account(invitee, code)
    return inviter, invitee


def pending_order(user_id: str) -> Order:
    at = clock.iso()
    order = Order(
        order_id=f"ord_{uuid.uuid4().hex[:24]}",
        user_id=user_id,
        method="stripe",
        amount=10,
        pay_money="10.00",
        currency="USD",
        quota=QUOTA,
        status="pending",
        created_at=at,
        updated_at=at,
    )
    order.save()
    return order


def paid(order: Order) -> PaymentEvent:
    return PaymentEvent(
        provider="stripe",
        event_id=f"evt_{uuid.uuid4().hex}",
        type=EventType.PAID,
        order_id=order.order_id,
        amount=Decimal("10.00"),
        currency="USD",
    )


def entries(user_id: str) -> dict[str, int]:
    return {e.entry_id: int(e.delta) for e in LedgerEntry.query(user_id, consistent_read=True)}


@pytest.mark.parametrize(
    ("quota", "percent", "expected"),
    [(5_000_000, "10", 500_000), (3_333_333, "10", 333_333), (999, "12.5", 124), (1, "99", 0)],
)
def test_rebate_is_rounded_down(quota: int, percent: str, expected: int) -> None:
    assert rebate_for(quota, Decimal(percent)) == expected


def test_two_orders_credited_at_once_pay_each_rebate_and_each_bonus_once() -> None:
    inviter, invitee = invited_pair()
    orders = [pending_order(invitee) for _ in range(2)]
    deliveries = [paid(order) for order in orders for _ in range(4)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(crediting.apply_event, deliveries))
    assert outcomes.count(Outcome.CREDITED) == 2
    rebate = rebate_for(QUOTA, Decimal(10))
    assert entries(inviter) == {
        f"referral_reward#{orders[0].order_id}": rebate,
        f"referral_reward#{orders[1].order_id}": rebate,
        f"signup_bonus#invitee#{invitee}": INVITER_BONUS,
    }
    assert entries(invitee) == {
        f"topup#{orders[0].order_id}": QUOTA,
        f"topup#{orders[1].order_id}": QUOTA,
        f"signup_bonus#{invitee}": INVITEE_BONUS,
    }
    a, b = Account.get(inviter, consistent_read=True), Account.get(invitee, consistent_read=True)
    assert int(a.aff_quota) == int(a.aff_history_quota) == 2 * rebate + INVITER_BONUS
    assert int(b.quota) == 2 * QUOTA + INVITEE_BONUS and int(b.paid_orders) == 2


def test_an_inactive_inviter_earns_no_rebate_but_the_order_is_credited() -> None:
    inviter, invitee = invited_pair()
    suspended = Account.get(inviter)
    suspended.update(actions=[Account.status.set("suspended"), Account.version.add(1)])
    order = pending_order(invitee)
    assert crediting.apply_event(paid(order)) is Outcome.CREDITED
    assert entries(inviter) == {}
    assert entries(invitee) == {
        f"topup#{order.order_id}": QUOTA,
        f"signup_bonus#{invitee}": INVITEE_BONUS,
    }


def refund(order: Order, total: str | None = None) -> PaymentEvent:
    """Stripe's charge.refunded: the cumulative total refunded (None: all of it)."""
    return PaymentEvent(
        provider="stripe",
        event_id=f"evt_{uuid.uuid4().hex}",
        type=EventType.REFUNDED,
        order_id=order.order_id,
        amount=Decimal(total or "10.00"),
        currency="USD",
        cumulative=True,
        full_refund=total is None,
    )


def balances(user_id: str) -> tuple[int, int, int]:
    account = Account.get(user_id, consistent_read=True)
    return int(account.quota), int(account.aff_quota), int(account.aff_history_quota)


def test_a_refund_claws_back_exactly_the_rebate_paid_and_the_bonuses() -> None:
    inviter, invitee = invited_pair()
    order = pending_order(invitee)
    crediting.apply_event(paid(order))
    full = refund(order)
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(crediting.apply_event, [full] * 4))
    assert outcomes.count(Outcome.REVERSED) == 1
    rebate = rebate_for(QUOTA, Decimal(10))
    assert entries(inviter) == {
        f"referral_reward#{order.order_id}": rebate,
        f"signup_bonus#invitee#{invitee}": INVITER_BONUS,
        f"referral_clawback#{order.order_id}#1000": -rebate,
        f"signup_bonus_reversal#invitee#{invitee}": -INVITER_BONUS,
    }
    assert entries(invitee) == {
        f"topup#{order.order_id}": QUOTA,
        f"signup_bonus#{invitee}": INVITEE_BONUS,
        f"reversal#{order.order_id}#1000": -QUOTA,
        f"signup_bonus_reversal#{invitee}": -INVITEE_BONUS,
    }
    assert balances(inviter) == (0, 0, 0) and balances(invitee)[0] == 0


def test_a_partial_refund_claws_back_the_rebate_in_proportion() -> None:
    inviter, invitee = invited_pair()
    first, second = pending_order(invitee), pending_order(invitee)
    crediting.apply_event(paid(first))
    crediting.apply_event(paid(second))
    rebate = rebate_for(QUOTA, Decimal(10))  # 333333
    crediting.apply_event(refund(first, "3.00"))
    crediting.apply_event(refund(first, "3.00"))  # repeated: nothing more
    clawed = entries(inviter)[f"referral_clawback#{first.order_id}#300"]
    assert clawed == -(rebate * 300 // 1000)
    # Bonuses stay while any of the order's credit stays, and another order's refund never
    # takes them back: only the order that paid them.
    crediting.apply_event(refund(second))
    assert f"signup_bonus_reversal#{invitee}" not in entries(invitee)
    crediting.apply_event(refund(first))
    assert entries(inviter)[f"referral_clawback#{first.order_id}#1000"] == -(
        rebate - rebate * 300 // 1000
    )
    assert entries(invitee)[f"signup_bonus_reversal#{invitee}"] == -INVITEE_BONUS
    assert balances(inviter) == (0, 0, 0)


def sums(user_id: str) -> tuple[int, int]:
    totals = {"quota": 0, "aff_quota": 0}
    for entry in LedgerEntry.query(user_id, consistent_read=True):
        totals[str(entry.balance)] += int(entry.delta)
    return totals["quota"], totals["aff_quota"]


def test_a_rebate_moved_to_the_balance_is_taken_back_from_quota() -> None:
    inviter, invitee = invited_pair()
    order = pending_order(invitee)
    crediting.apply_event(paid(order))
    rebate = rebate_for(QUOTA, Decimal(10))
    earned = rebate + INVITER_BONUS
    # The inviter moves all its reward quota to its balance, then spends a little of it.
    transfer(inviter, earned, "all")
    ledger.apply([ledger.Change(inviter, "usage#spent", ledger.EntryKind.USAGE, -100)])
    crediting.apply_event(refund(order, "5.00"))
    half = rebate * 500 // 1000
    assert entries(inviter)[f"referral_clawback#{order.order_id}#500#quota"] == -half
    assert f"referral_clawback#{order.order_id}#500" not in entries(inviter)
    assert balances(inviter) == (earned - 100 - half, 0, earned - half)
    crediting.apply_event(refund(order))
    # Everything came back: the balances are what they were before the rebate, less the
    # spending (quota below zero: the reward it spent was never earned).
    assert balances(inviter) == (-100, 0, 0)
    assert sums(inviter) == (-100, 0)


def test_a_clawback_takes_aff_quota_first_and_the_rest_from_quota() -> None:
    inviter, invitee = invited_pair()
    order = pending_order(invitee)
    crediting.apply_event(paid(order))
    rebate = rebate_for(QUOTA, Decimal(10))
    transfer(inviter, rebate + INVITER_BONUS - 1000, "most")
    crediting.apply_event(refund(order))
    found = entries(inviter)
    assert found[f"referral_clawback#{order.order_id}#1000"] == -1000
    assert found[f"referral_clawback#{order.order_id}#1000#quota"] == -(rebate - 1000)
    assert found[f"signup_bonus_reversal#invitee#{invitee}#quota"] == -INVITER_BONUS
    assert balances(inviter) == (0, 0, 0) and sums(inviter) == (0, 0)


def test_a_transfer_retried_after_its_reward_was_clawed_back_moves_nothing() -> None:
    inviter, invitee = invited_pair()
    order = pending_order(invitee)
    crediting.apply_event(paid(order))
    moved = transfer(inviter, rebate_for(QUOTA, Decimal(10)), "once")
    crediting.apply_event(refund(order))  # takes it all back, from quota
    again = transfer(inviter, rebate_for(QUOTA, Decimal(10)), "once")  # the client's retry
    assert (int(again.quota), int(again.aff_quota)) == (0, 0) != (int(moved.quota), 0)
    with pytest.raises(InsufficientAffQuota):
        transfer(inviter, rebate_for(QUOTA, Decimal(10)), "another")
    assert sums(inviter) == (0, 0)
