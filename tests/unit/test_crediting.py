"""Crediting rules on the embedded AWS: one credit per order under duplicates and concurrency,
mismatches disputed, state machine (failed/expired/paid/refunded/disputed), reversals once,
admin completion through the same path, transient errors raised for SQS to retry."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from billing import clock, ledger
from billing.errors import NotFound
from billing.models import Account, AuditRecord, LedgerEntry, Order
from billing.payments import crediting
from billing.payments.crediting import Outcome
from billing.payments.providers.base import EventType, PaymentEvent
from billing.referral import signup

from local.aws import EmbeddedAws, Fault
from tests.support.embedded_tables import embedded_tables

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
    assert int(Account.get(order.user_id).paid_orders) == 1


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
    assert '"PaymentMismatch"' in capsys.readouterr().out  # the EMF metric
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


def test_a_refund_reverses_the_credit_once_even_below_zero() -> None:
    order = new_order()
    crediting.apply_event(event(order))
    ledger.apply([ledger.Change(order.user_id, "usage#r1", ledger.EntryKind.USAGE, -1_000_000)])
    refund = event(order, EventType.REFUNDED, amount=Decimal("10.00"))
    assert crediting.apply_event(refund) is Outcome.REVERSED
    assert crediting.apply_event(refund) is Outcome.DUPLICATE
    dispute = event(order, EventType.DISPUTED, order_id=None)
    assert crediting.apply_event(dispute) is Outcome.DUPLICATE
    assert reload(order).status == "refunded"
    assert balance(order.user_id) == -1_000_000
    reversal = entries(order.user_id)[f"reversal#{order.order_id}"]
    assert reversal.kind == "reversal" and int(reversal.delta) == -QUOTA


def test_a_dispute_finds_its_order_by_payment_intent() -> None:
    order = new_order()
    crediting.apply_event(event(order, provider_payment_id="pi_dispute_me"))
    dispute = event(order, EventType.DISPUTED, order_id=None, provider_payment_id="pi_dispute_me")
    assert crediting.apply_event(dispute) is Outcome.REVERSED
    assert reload(order).status == "disputed"
    assert balance(order.user_id) == 0
    assert crediting.apply_event(event(order, EventType.REFUNDED)) is Outcome.DUPLICATE
    assert balance(order.user_id) == 0


def test_a_refund_before_the_payment_closes_the_order_without_credit() -> None:
    order = new_order()
    assert crediting.apply_event(event(order, EventType.REFUNDED)) is Outcome.CLOSED
    assert crediting.apply_event(event(order)) is Outcome.IGNORED
    assert reload(order).status == "refunded"
    assert balance(order.user_id) == 0 and entries(order.user_id) == {}


def test_a_reversal_of_a_mismatched_order_takes_nothing_back() -> None:
    order = new_order()
    crediting.apply_event(event(order, amount=Decimal("1.00")))
    assert crediting.apply_event(event(order, EventType.REFUNDED)) is Outcome.IGNORED
    assert balance(order.user_id) == 0 and entries(order.user_id) == {}


def test_unknown_orders_are_acknowledged() -> None:
    ghost = PaymentEvent(
        provider="stripe", event_id="evt_ghost", type=EventType.PAID, order_id="ord_nope"
    )
    assert crediting.apply_event(ghost) is Outcome.UNKNOWN_ORDER
    dispute = PaymentEvent(
        provider="stripe",
        event_id="evt_ghost2",
        type=EventType.DISPUTED,
        order_id=None,
        provider_payment_id="pi_nobody",
    )
    assert crediting.apply_event(dispute) is Outcome.UNKNOWN_ORDER


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
    audits = [a for a in AuditRecord.scan() if a.target == order.order_id]
    assert {a.action for a in audits} == {"topup.complete"}
    assert sorted(a.detail["outcome"] for a in audits) == ["credited", "duplicate"]


def test_admin_may_complete_an_expired_order_but_not_a_refunded_one() -> None:
    expired, refunded = new_order(), new_order()
    crediting.apply_event(event(expired, EventType.EXPIRED))
    assert crediting.complete_by_admin("admin-1", expired.order_id).status == "paid"
    assert balance(expired.user_id) == QUOTA
    crediting.apply_event(event(refunded))
    crediting.apply_event(event(refunded, EventType.REFUNDED))
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
