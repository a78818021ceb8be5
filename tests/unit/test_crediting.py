"""Crediting rules on the embedded AWS: one credit per order under duplicates and concurrency,
mismatches disputed, state machine (failed/expired/paid/refunded/disputed), refunds reversed
in proportion once whatever their order and repetition, lifetimes (late payments disputed,
the sweep), admin completion through the same path, events that cannot apply yet raised for
SQS to retry (and park in the DLQ), transient errors raised too."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from billing import clock, ledger
from billing.errors import NotFound
from billing.models import Account, AuditRecord, LedgerEntry, Order
from billing.payments import crediting, orders
from billing.payments.crediting import Outcome
from billing.payments.providers.base import EventType, PaymentEvent
from billing.referral import signup

from local.aws import EmbeddedAws, Fault
from tests.support.embedded_tables import embedded_tables, wait_for_indexes

QUOTA = 5_000_000


@pytest.fixture(scope="module")
def aws() -> Iterator[EmbeddedAws]:
    with embedded_tables() as embedded:
        yield embedded


@pytest.fixture(autouse=True)
def _tables(aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "QuotaTopupTest")
    yield
    aws.registry.clear()


def new_order(
    method: str = "stripe", pay_money: str = "10.00", currency: str = "USD", quota: int = QUOTA
) -> Order:
    user_id = f"u-{uuid.uuid4().hex[:12]}"
    signup.create_account(user_id, None)
    at = clock.iso()
    order = Order(
        order_id=f"ord_{uuid.uuid4().hex[:24]}",
        user_id=user_id,
        method=method,
        amount=10,
        pay_money=pay_money,
        currency=currency,
        quota=quota,
        status="pending",
        created_at=at,
        updated_at=at,
    )
    order.save()
    return order


def event(
    order: Order, kind: EventType = EventType.PAID, *, event_id: str | None = None, **kw: Any
) -> PaymentEvent:
    values: dict[str, Any] = {
        "provider": order.method,
        "event_id": event_id or f"evt_{uuid.uuid4().hex}",
        "type": kind,
        "order_id": order.order_id,
        "amount": Decimal(order.pay_money) if kind is EventType.PAID else None,
        "currency": order.currency,
        "provider_payment_id": f"pi_{order.order_id}",
    }
    values.update(kw)
    return PaymentEvent(**values)


def reload(order: Order) -> Order:
    return Order.get(order.order_id, consistent_read=True)


def entries(user_id: str) -> dict[str, LedgerEntry]:
    return {e.entry_id: e for e in LedgerEntry.query(user_id, consistent_read=True)}


def balance(user_id: str) -> int:
    """The balance, after checking that the ledger sums to it."""
    account = Account.get(user_id, consistent_read=True)
    assert sum(int(e.delta) for e in entries(user_id).values()) == int(account.quota)
    return int(account.quota)


def test_a_payment_credits_once() -> None:
    order = new_order()
    paid = event(order)
    assert crediting.apply_event(paid) is Outcome.CREDITED
    assert crediting.apply_event(paid) is Outcome.DUPLICATE
    assert crediting.apply_event(event(order)) is Outcome.DUPLICATE  # another event id
    current = reload(order)
    assert current.status == "paid" and current.paid_at
    assert current.provider_payment_id == f"pi_{order.order_id}"
    assert balance(order.user_id) == QUOTA
    found = entries(order.user_id)
    assert list(found) == [f"topup#{order.order_id}"]
    assert found[f"topup#{order.order_id}"].kind == "topup"
    assert int(Account.get(order.user_id, consistent_read=True).paid_orders) == 1


def test_parallel_duplicates_credit_exactly_once() -> None:
    order = new_order()
    events = [event(order, event_id="evt_same") for _ in range(6)]
    events += [event(order) for _ in range(6)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = list(pool.map(crediting.apply_event, events))
    assert outcomes.count(Outcome.CREDITED) == 1
    assert outcomes.count(Outcome.DUPLICATE) == 11
    assert balance(order.user_id) == QUOTA


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"amount": Decimal("9.99")}, "amount"),
        ({"amount": Decimal("10.01")}, "amount"),
        ({"amount": None}, "amount"),
        ({"currency": "EUR"}, "currency"),
        ({"currency": None}, "currency"),
        ({"provider": "epay"}, "provider"),
    ],
)
def test_a_mismatch_disputes_the_order_and_credits_nothing(
    changes: dict[str, Any], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    order = new_order()
    assert crediting.apply_event(event(order, **changes)) is Outcome.MISMATCH
    current = reload(order)
    assert current.status == "disputed" and current.failure_reason == f"mismatch:{reason}"
    assert balance(order.user_id) == 0 and entries(order.user_id) == {}
    assert '"OrdersDisputed"' in capsys.readouterr().out  # the EMF metric
    # A correct payment arriving later does not credit a disputed order either.
    assert crediting.apply_event(event(order)) is Outcome.IGNORED
    assert balance(order.user_id) == 0


def test_equal_decimals_in_another_form_match() -> None:
    order = new_order(pay_money="7.30", currency="CNY", method="epay")
    paid = event(order, amount=Decimal("7.3"), currency="cny")
    assert crediting.apply_event(paid) is Outcome.CREDITED


def test_expired_after_paid_leaves_it_paid() -> None:
    order = new_order()
    assert crediting.apply_event(event(order)) is Outcome.CREDITED
    assert crediting.apply_event(event(order, EventType.EXPIRED)) is Outcome.IGNORED
    assert crediting.apply_event(event(order, EventType.FAILED)) is Outcome.IGNORED
    assert reload(order).status == "paid"
    assert balance(order.user_id) == QUOTA


def test_failed_and_expired_close_a_pending_order_and_a_late_payment_is_not_credited() -> None:
    failed, expired = new_order(), new_order()
    assert crediting.apply_event(event(failed, EventType.FAILED)) is Outcome.FAILED
    assert crediting.apply_event(event(expired, EventType.EXPIRED)) is Outcome.EXPIRED
    assert reload(failed).status == "failed" and reload(expired).status == "expired"
    assert crediting.apply_event(event(expired, EventType.FAILED)) is Outcome.IGNORED
    assert crediting.apply_event(event(failed)) is Outcome.IGNORED
    assert balance(failed.user_id) == 0 and reload(failed).status == "failed"


def test_another_providers_event_cannot_close_an_order() -> None:
    order = new_order()
    other = event(order, EventType.EXPIRED, provider="creem")
    assert crediting.apply_event(other) is Outcome.IGNORED
    assert reload(order).status == "pending"


def refund(order: Order, amount: str | None = None, **kw: Any) -> PaymentEvent:
    """A Stripe-style refund event: `amount` is the cumulative total refunded (None: all)."""
    values: dict[str, Any] = {
        "amount": Decimal(amount) if amount is not None else Decimal(order.pay_money),
        "cumulative": True,
        "full_refund": amount is None,
    }
    values.update(kw)
    return event(order, EventType.REFUNDED, **values)


def piece(order: Order, amount: str, refund_id: str, **kw: Any) -> PaymentEvent:
    """A Creem/Waffo-style refund: this refund alone, with its own id."""
    return event(order, EventType.REFUNDED, amount=Decimal(amount), refund_id=refund_id, **kw)


def reversed_total(order: Order) -> int:
    return -sum(
        int(e.delta)
        for e in entries(order.user_id).values()
        if e.entry_id.startswith(f"reversal#{order.order_id}#")
    )


def test_a_refund_reverses_the_credit_once_even_below_zero(aws: EmbeddedAws) -> None:
    order = new_order()
    crediting.apply_event(event(order))
    ledger.apply([ledger.Change(order.user_id, "usage#r1", ledger.EntryKind.USAGE, -1_000_000)])
    full = refund(order)
    assert crediting.apply_event(full) is Outcome.REVERSED
    assert crediting.apply_event(full) is Outcome.DUPLICATE
    dispute = event(order, EventType.DISPUTED, order_id=None)
    wait_for_indexes(aws)  # a dispute finds its order through the by_payment index
    assert crediting.apply_event(dispute) is Outcome.DUPLICATE
    current = reload(order)
    assert current.status == "refunded" and current.refunded_money == "10.00"
    assert balance(order.user_id) == -1_000_000
    reversal = entries(order.user_id)[f"reversal#{order.order_id}#1000"]
    assert reversal.kind == "reversal" and int(reversal.delta) == -QUOTA


@pytest.mark.parametrize(
    ("totals", "steps", "status"),
    [
        # cumulative totals as Stripe sends them, in the order they arrive
        (["5.00", "10.00"], {"500": 2_500_000, "1000": 2_500_000}, "refunded"),
        (["5.00", "5.00", "10.00", "5.00"], {"500": 2_500_000, "1000": 2_500_000}, "refunded"),
        (["10.00", "5.00"], {"1000": 5_000_000}, "refunded"),  # the older 50% after the 100%
        (["3.33"], {"333": 1_665_000}, "paid"),
        (["0.01", "0.02", "0.03"], {"1": 5_000, "2": 5_000, "3": 5_000}, "paid"),
    ],
)
def test_partial_refunds_reverse_in_proportion_whatever_their_order(
    totals: list[str], steps: dict[str, int], status: str
) -> None:
    order = new_order()
    crediting.apply_event(event(order))
    for total in totals:
        crediting.apply_event(refund(order, total))
    found = {
        e.entry_id.rsplit("#", 1)[1]: -int(e.delta)
        for e in entries(order.user_id).values()
        if e.kind == "reversal"
    }
    assert found == steps
    current = reload(order)
    assert current.status == status
    assert current.refunded_money == max(totals, key=Decimal)
    assert balance(order.user_id) == QUOTA - sum(steps.values())


def test_the_reversed_total_is_floor_quota_times_refunded_over_paid() -> None:
    order = new_order(pay_money="7.30", currency="CNY", method="stripe", quota=3_333_333)
    crediting.apply_event(event(order, currency="CNY"))
    for total in ("1.11", "2.22", "7.29"):
        crediting.apply_event(refund(order, total, currency="CNY"))
        assert reversed_total(order) == 3_333_333 * int(Decimal(total) * 100) // 730
    crediting.apply_event(refund(order, "7.30", currency="CNY"))
    assert reversed_total(order) == 3_333_333 and reload(order).status == "refunded"


def test_refunds_with_their_own_ids_add_up_once_each() -> None:
    order = new_order(method="creem")
    crediting.apply_event(event(order))
    first, second = piece(order, "2.50", "ref_a"), piece(order, "2.50", "ref_b")
    assert crediting.apply_event(first) is Outcome.REVERSED
    assert crediting.apply_event(first) is Outcome.DUPLICATE  # the same refund again
    assert crediting.apply_event(piece(order, "2.50", "ref_a")) is Outcome.DUPLICATE
    assert crediting.apply_event(second) is Outcome.REVERSED
    current = reload(order)
    assert current.refunded_money == "5.00" and current.refund_ids == {"ref_a", "ref_b"}
    assert current.status == "paid" and reversed_total(order) == QUOTA // 2
    last = piece(order, "5.00", "ref_c", full_refund=True)
    assert crediting.apply_event(last) is Outcome.REVERSED
    assert reload(order).status == "refunded" and balance(order.user_id) == 0


def test_a_fully_refunded_status_counts_all_and_a_late_partial_adds_nothing() -> None:
    order = new_order(method="waffo")
    crediting.apply_event(event(order))
    # The last refund says the order is fully refunded; an earlier partial one arrives after.
    final = piece(order, "7.00", "r2", full_refund=True)
    assert crediting.apply_event(final) is Outcome.REVERSED
    assert crediting.apply_event(piece(order, "3.00", "r1")) is Outcome.DUPLICATE
    assert reload(order).status == "refunded" and reload(order).refunded_money == "10.00"
    assert balance(order.user_id) == 0 and reversed_total(order) == QUOTA


def test_a_refund_above_the_rest_is_capped_at_what_was_paid() -> None:
    order = new_order(method="creem")
    crediting.apply_event(event(order))
    crediting.apply_event(piece(order, "6.00", "r1"))
    assert crediting.apply_event(piece(order, "6.00", "r2")) is Outcome.REVERSED
    assert reload(order).refunded_money == "10.00" and reload(order).status == "refunded"
    assert balance(order.user_id) == 0


def test_a_dispute_after_a_partial_refund_takes_back_the_rest(aws: EmbeddedAws) -> None:
    order = new_order()
    crediting.apply_event(event(order, provider_payment_id="pi_partial_then_dispute"))
    crediting.apply_event(refund(order, "4.00"))
    dispute = event(
        order, EventType.DISPUTED, order_id=None, provider_payment_id="pi_partial_then_dispute"
    )
    wait_for_indexes(aws)
    assert crediting.apply_event(dispute) is Outcome.REVERSED
    assert crediting.apply_event(dispute) is Outcome.DUPLICATE
    assert crediting.apply_event(refund(order, "10.00")) is Outcome.DUPLICATE
    current = reload(order)
    assert (current.status, current.refunded_money, current.failure_reason) == (
        "disputed",
        "4.00",
        "chargeback",
    )
    assert entries(order.user_id)[f"reversal#{order.order_id}#dispute"].delta == -3_000_000
    assert balance(order.user_id) == 0


def test_parallel_deliveries_of_one_refund_take_back_once() -> None:
    order = new_order()
    crediting.apply_event(event(order))
    same = [refund(order, "5.00") for _ in range(8)]  # 8 event ids, one refund
    same += [piece(order, "9.99", "never", provider="other")]  # another provider: ignored
    with ThreadPoolExecutor(max_workers=9) as pool:
        outcomes = list(pool.map(crediting.apply_event, same))
    assert outcomes.count(Outcome.REVERSED) == 1
    assert reversed_total(order) == QUOTA // 2
    assert balance(order.user_id) == QUOTA // 2


def test_parallel_distinct_refunds_each_apply_once_and_sum_exactly() -> None:
    order = new_order(method="creem")
    crediting.apply_event(event(order))
    pieces = [piece(order, "1.00", f"ref_{n}") for n in range(10)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        outcomes = list(pool.map(crediting.apply_event, pieces + pieces))
    assert outcomes.count(Outcome.REVERSED) == 10
    current = reload(order)
    assert current.status == "refunded" and current.refunded_money == "10.00"
    assert len(current.refund_ids or ()) == 10
    assert balance(order.user_id) == 0 and reversed_total(order) == QUOTA


def test_a_dispute_finds_its_order_by_payment_intent(aws: EmbeddedAws) -> None:
    order = new_order()
    crediting.apply_event(event(order, provider_payment_id="pi_dispute_me"))
    wait_for_indexes(aws)
    dispute = event(order, EventType.DISPUTED, order_id=None, provider_payment_id="pi_dispute_me")
    assert crediting.apply_event(dispute) is Outcome.REVERSED
    assert reload(order).status == "disputed"
    assert balance(order.user_id) == 0
    assert crediting.apply_event(refund(order)) is Outcome.DUPLICATE
    assert balance(order.user_id) == 0


def test_a_full_refund_before_the_payment_closes_the_order_without_credit() -> None:
    order = new_order()
    assert crediting.apply_event(refund(order)) is Outcome.CLOSED
    assert crediting.apply_event(event(order)) is Outcome.IGNORED
    assert reload(order).status == "refunded"
    assert balance(order.user_id) == 0 and entries(order.user_id) == {}


def test_a_partial_refund_or_dispute_before_the_credit_waits_for_it() -> None:
    order = new_order()
    with pytest.raises(crediting.NotApplicableYet):
        crediting.apply_event(refund(order, "5.00"))
    with pytest.raises(crediting.NotApplicableYet):
        crediting.apply_event(event(order, EventType.DISPUTED))
    assert reload(order).status == "pending"
    # Once the payment is credited, the same refund applies (SQS delivered it again).
    crediting.apply_event(event(order))
    assert crediting.apply_event(refund(order, "5.00")) is Outcome.REVERSED
    assert balance(order.user_id) == QUOTA // 2


def test_a_refund_that_cannot_be_read_is_kept_for_an_operator() -> None:
    order = new_order(method="waffo")
    crediting.apply_event(event(order))
    for unreadable in (
        event(order, EventType.REFUNDED, amount=Decimal("1.00")),  # no id: a repeat looks alike
        event(order, EventType.REFUNDED, amount=None, refund_id="r2"),  # no amount
        piece(order, "1.00", "r3", currency="EUR"),  # another currency than the order's
    ):
        with pytest.raises(crediting.NotApplicableYet):
            crediting.apply_event(unreadable)
    assert reload(order).status == "paid" and balance(order.user_id) == QUOTA


def test_a_reversal_of_a_mismatched_order_takes_nothing_back_and_blocks_completion() -> None:
    order = new_order()
    crediting.apply_event(event(order, amount=Decimal("1.00")))
    assert crediting.apply_event(refund(order, "1.00")) is Outcome.CLOSED
    assert reload(order).failure_reason == "refunded_before_credit"
    with pytest.raises(crediting.OrderNotCompletable):
        crediting.complete_by_admin("admin-1", order.order_id)
    assert balance(order.user_id) == 0 and entries(order.user_id) == {}


@pytest.mark.parametrize("kind", [EventType.PAID, EventType.REFUNDED, EventType.DISPUTED])
def test_money_events_of_unknown_orders_are_retried_not_acknowledged(kind: EventType) -> None:
    ghost = PaymentEvent(
        provider="stripe",
        event_id=f"evt_ghost_{kind}",
        type=kind,
        order_id="ord_nope" if kind is not EventType.DISPUTED else None,
        amount=Decimal("10.00"),
        currency="USD",
        provider_payment_id="pi_nobody",
        cumulative=True,
    )
    with pytest.raises(crediting.NotApplicableYet):
        crediting.apply_event(ghost)


def test_a_failure_of_an_unknown_order_is_acknowledged() -> None:
    ghost = PaymentEvent(
        provider="stripe", event_id="evt_ghost_f", type=EventType.FAILED, order_id="ord_nope"
    )
    assert crediting.apply_event(ghost) is Outcome.UNKNOWN_ORDER


def test_a_dispute_of_an_order_completed_by_hand_has_no_payment_to_match(
    aws: EmbeddedAws,
) -> None:
    order = new_order()
    crediting.complete_by_admin("admin-1", order.order_id)
    wait_for_indexes(aws)  # the index has caught up and still has no payment id to match
    dispute = event(order, EventType.DISPUTED, order_id=None, provider_payment_id="pi_by_hand")
    with pytest.raises(crediting.NotApplicableYet):
        crediting.apply_event(dispute)
    assert balance(order.user_id) == QUOTA
    # Once the provider's own paid event comes (a duplicate), its payment id is known.
    paid_later = event(order, provider_payment_id="pi_by_hand")
    assert crediting.apply_event(paid_later) is Outcome.DUPLICATE
    wait_for_indexes(aws)
    assert crediting.apply_event(dispute) is Outcome.REVERSED
    assert balance(order.user_id) == 0


def test_queued_refunds_of_the_old_format_still_apply() -> None:
    order = new_order()
    crediting.apply_event(event(order))
    old = (
        '{"amount": "10.00", "currency": "USD", "detail": {"fully_refunded": "true"}, '
        f'"event_id": "evt_old", "order_id": "{order.order_id}", "provider": "stripe", '
        '"provider_payment_id": null, "type": "refunded"}'
    )
    assert crediting.apply_event(PaymentEvent.from_message(old)) is Outcome.REVERSED
    assert reload(order).status == "refunded" and balance(order.user_id) == 0


# ------------------------------------------------------------ lifetimes


def overdue_order(**kw: Any) -> Order:
    order = new_order(**kw)
    past = clock.iso(clock.now() - timedelta(seconds=5))
    order.update(actions=[Order.expires_at.set(past), Order.pending_shard.set("p#0")])
    return reload(order)


def test_a_payment_after_the_lifetime_disputes_the_order_and_an_admin_completes_it_once() -> None:
    order = overdue_order()
    late = event(order, received_at=clock.iso())
    assert crediting.apply_event(late) is Outcome.LATE
    current = reload(order)
    assert (current.status, current.failure_reason) == ("disputed", "paid_after_expiry")
    assert current.provider_payment_id == f"pi_{order.order_id}"  # its refund can find it
    assert crediting.apply_event(late) is Outcome.IGNORED
    assert balance(order.user_id) == 0

    with ThreadPoolExecutor(max_workers=6) as pool:
        done = list(
            pool.map(lambda _: crediting.complete_by_admin("a", order.order_id).status, range(6))
        )
    assert done == ["paid"] * 6
    assert balance(order.user_id) == QUOTA
    assert list(entries(order.user_id)) == [f"topup#{order.order_id}"]


def test_a_payment_received_in_time_credits_even_if_the_sweep_came_first(
    aws: EmbeddedAws,
) -> None:
    order = new_order()
    on_time = event(order, received_at=clock.iso(clock.now() - timedelta(seconds=2)))
    past = clock.iso(clock.now() - timedelta(seconds=1))
    order.update(actions=[Order.expires_at.set(past), Order.pending_shard.set("p#1")])
    wait_for_indexes(aws)  # the sweep reads the open_orders index
    assert orders.expire_overdue()["expired"] >= 1
    assert (reload(order).status, reload(order).failure_reason) == ("expired", "ttl")
    assert crediting.apply_event(on_time) is Outcome.CREDITED
    assert reload(order).status == "paid" and balance(order.user_id) == QUOTA


def test_a_payment_after_the_provider_expired_the_session_is_not_credited() -> None:
    order = new_order()
    crediting.apply_event(event(order, EventType.EXPIRED))
    assert crediting.apply_event(event(order)) is Outcome.LATE
    assert reload(order).failure_reason == "paid_after_expiry"
    assert balance(order.user_id) == 0


def test_the_sweep_expires_only_overdue_pending_orders_once(aws: EmbeddedAws) -> None:
    overdue, fresh, paid = overdue_order(), new_order(), overdue_order()
    fresh.update(
        actions=[
            Order.expires_at.set(clock.iso(clock.now() + timedelta(hours=1))),
            Order.pending_shard.set("p#2"),
        ]
    )
    # credited before the sweep: the credit clears its pending shard
    crediting.apply_event(event(paid, received_at=clock.iso(clock.now() - timedelta(minutes=1))))
    wait_for_indexes(aws)
    orders.expire_overdue()
    assert (reload(overdue).status, reload(overdue).failure_reason) == ("expired", "ttl")
    assert reload(overdue).pending_shard is None
    assert reload(fresh).status == "pending" and reload(paid).status == "paid"
    wait_for_indexes(aws)
    assert orders.expire_overdue() == {"expired": 0, "cleared": 0}


def test_admin_completion_refuses_a_charged_back_order() -> None:
    order = new_order()
    crediting.apply_event(event(order))
    crediting.apply_event(event(order, EventType.DISPUTED))
    with pytest.raises(crediting.OrderNotCompletable):
        crediting.complete_by_admin("admin-1", order.order_id)
    assert balance(order.user_id) == 0


def test_a_queued_event_cannot_claim_to_be_the_admin() -> None:
    order = new_order()
    forged = event(order, provider="admin", amount=Decimal("0.01"))
    assert crediting.apply_event(forged) is Outcome.IGNORED
    assert reload(order).status == "pending" and balance(order.user_id) == 0


def test_admin_completion_credits_once_through_the_same_entry() -> None:
    order = new_order()
    completed = crediting.complete_by_admin("admin-1", order.order_id)
    assert completed.status == "paid"
    again = crediting.complete_by_admin("admin-1", order.order_id)
    assert again.paid_at == completed.paid_at
    assert crediting.apply_event(event(order)) is Outcome.DUPLICATE  # the provider's, later
    assert balance(order.user_id) == QUOTA
    assert list(entries(order.user_id)) == [f"topup#{order.order_id}"]
    audits = [a for a in AuditRecord.scan(consistent_read=True) if a.target == order.order_id]
    assert {a.action for a in audits} == {"topup.complete"}
    assert sorted(a.detail["outcome"] for a in audits) == ["credited", "duplicate"]


def test_admin_may_complete_an_expired_order_but_not_a_refunded_one() -> None:
    expired, refunded = new_order(), new_order()
    crediting.apply_event(event(expired, EventType.EXPIRED))
    assert crediting.complete_by_admin("admin-1", expired.order_id).status == "paid"
    assert balance(expired.user_id) == QUOTA
    crediting.apply_event(event(refunded))
    crediting.apply_event(refund(refunded))
    with pytest.raises(crediting.OrderNotCompletable):
        crediting.complete_by_admin("admin-1", refunded.order_id)
    with pytest.raises(NotFound):
        crediting.complete_by_admin("admin-1", "ord_missing")
    assert balance(refunded.user_id) == 0


def test_concurrent_admin_and_provider_credit_once() -> None:
    order = new_order()

    def attempt(index: int) -> object:
        if index % 2:
            return crediting.complete_by_admin("admin-1", order.order_id).status
        return crediting.apply_event(event(order))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(attempt, range(8)))
    assert balance(order.user_id) == QUOTA
    assert reload(order).status == "paid"


def test_the_credit_hook_joins_the_same_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    order = new_order()
    inviter = new_order().user_id
    seen: list[tuple[str, str]] = []

    def rebate(credited: Order, account: Account) -> list[ledger.Change]:
        seen.append((credited.order_id, account.user_id))
        return [
            ledger.Change(
                inviter,
                f"referral_reward#{credited.order_id}",
                ledger.EntryKind.REFERRAL_REWARD,
                int(credited.quota) // 10,
                balance="aff_quota",
            )
        ]

    monkeypatch.setattr(crediting, "extra_changes_for_credit", rebate)
    assert crediting.apply_event(event(order)) is Outcome.CREDITED
    assert crediting.apply_event(event(order)) is Outcome.DUPLICATE
    assert seen[0] == (order.order_id, order.user_id)
    assert int(Account.get(inviter, consistent_read=True).aff_quota) == QUOTA // 10
    assert f"referral_reward#{order.order_id}" in entries(inviter)


def test_transient_dynamodb_errors_raise_so_sqs_retries(aws: EmbeddedAws) -> None:
    order = new_order()
    aws.registry.add(
        Fault(
            service="dynamodb",
            operation="TransactWriteItems",
            error_code="ThrottlingException",
            count=-1,
            contains=order.order_id,
        )
    )
    with pytest.raises(Exception) as raised:
        crediting.apply_event(event(order))
    assert not isinstance(raised.value, AssertionError)
    assert reload(order).status == "pending" and balance(order.user_id) == 0
    aws.registry.clear()
    assert crediting.apply_event(event(order)) is Outcome.CREDITED
    assert balance(order.user_id) == QUOTA


def conflicts(aws: EmbeddedAws, order: Order, count: int) -> None:
    """The order's next `count` single-item updates meet a transaction on it."""
    aws.registry.add(
        Fault(
            service="dynamodb",
            operation="UpdateItem",
            error_code="TransactionConflictException",
            count=count,
            contains=order.order_id,
        )
    )


def test_order_updates_that_meet_a_transaction_are_retried(aws: EmbeddedAws) -> None:
    failed, disputed = new_order(), new_order()
    conflicts(aws, failed, 2)
    conflicts(aws, disputed, 2)
    assert crediting.apply_event(event(failed, EventType.FAILED)) is Outcome.FAILED
    assert crediting.apply_event(event(disputed, amount=Decimal("9.99"))) is Outcome.MISMATCH
    assert reload(failed).status == "failed" and reload(disputed).status == "disputed"
    assert balance(failed.user_id) == balance(disputed.user_id) == 0
    # The sweep too: an overdue order whose update meets a transaction is still expired.
    overdue = overdue_order()
    wait_for_indexes(aws)
    conflicts(aws, overdue, 2)
    assert orders.expire_overdue()["expired"] >= 1
    assert reload(overdue).status == "expired"


def test_an_order_update_that_keeps_conflicting_raises_for_sqs_to_retry(aws: EmbeddedAws) -> None:
    order = new_order()
    conflicts(aws, order, -1)
    with pytest.raises(Exception) as raised:
        crediting.apply_event(event(order, EventType.FAILED))
    assert not isinstance(raised.value, AssertionError)
    assert reload(order).status == "pending"
    aws.registry.clear()
    assert crediting.apply_event(event(order, EventType.FAILED)) is Outcome.FAILED
