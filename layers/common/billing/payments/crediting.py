"""Apply one verified payment event to its order, exactly once (DESIGN invariants 1, 2, 5, 6).

A payment credits in ONE ledger transaction: the order's pending→paid (conditional on the
order still being pending and belonging to the event's provider) + the ledger entry
`topup#<order>` (attribute_not_exists) + the balance, plus whatever `extra_changes_for_credit`
adds (the referral rebate joins here). So duplicates, retries and out-of-order events change
nothing, and a paid amount, currency or provider that differs from the order credits nothing:
the order becomes `disputed` instead.

Events that can never apply (unknown order, wrong state) are acknowledged with a log line so they
do not block the queue; transient failures (LedgerContention, DynamoDB throttling or faults)
propagate, so the record is reported as a batch item failure and SQS retries it (and after
maxReceiveCount, moves it to the DLQ, which alarms).
"""

from __future__ import annotations

from enum import StrEnum

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from pynamodb.exceptions import UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action

from billing import clock, ledger, money
from billing.errors import DomainError, NotFound
from billing.models import Account, Order
from billing.ops import record_audit
from billing.payments import orders
from billing.payments.providers.base import EventType, PaymentEvent
from billing.referral import clawback_changes, credit_changes

logger = Logger(child=True)

ADMIN_PROVIDER = "admin"
_REBUILD_ATTEMPTS = 3


class Outcome(StrEnum):
    CREDITED = "credited"
    DUPLICATE = "duplicate"  # already applied: nothing changed
    FAILED = "failed"
    EXPIRED = "expired"
    MISMATCH = "mismatch"  # order disputed, nothing credited
    REVERSED = "reversed"
    CLOSED = "closed"  # a refund/dispute of a never-credited pending order: closed, no reversal
    IGNORED = "ignored"  # the order's state does not allow it: nothing changed
    UNKNOWN_ORDER = "unknown_order"


class OrderNotCompletable(DomainError):
    code = "order_not_completable"
    status = 409
    message = "This order was refunded or disputed and cannot be completed."


# ---------------------------------------------------------------- extension hooks


def extra_changes_for_credit(order: Order, account: Account) -> list[ledger.Change]:
    """Changes that join the credit of `order` in its transaction: the inviter's rebate
    (`referral_reward#<order>` on aff_quota) and first-order bonuses."""
    return credit_changes(order, account)


def extra_changes_for_reversal(order: Order, account: Account) -> list[ledger.Change]:
    """Changes that join the reversal of `order`: the clawback of its rebate."""
    return clawback_changes(order, account)


# ---------------------------------------------------------------- entry points


def apply_event(event: PaymentEvent) -> Outcome:
    """Apply one event; returns what happened. Raises only on transient/unexpected errors."""
    if event.provider == ADMIN_PROVIDER:
        # Only complete_by_admin may credit as the admin; never a queued message.
        logger.error("queued event claims the admin provider", extra={"event_id": event.event_id})
        return Outcome.IGNORED
    order = _find_order(event)
    if order is None:
        outcome = Outcome.UNKNOWN_ORDER
    elif event.type is EventType.PAID:
        outcome = _credit(order, event)
    elif event.type is EventType.FAILED:
        outcome = _close(order, event, orders.FAILED)
    elif event.type is EventType.EXPIRED:
        outcome = _close(order, event, orders.EXPIRED)
    else:
        outcome = _reverse(order, event)
    log = logger.warning if outcome is Outcome.UNKNOWN_ORDER else logger.info
    log(
        "payment event applied",
        extra={
            "provider": event.provider,
            "event_id": event.event_id,
            "type": str(event.type),
            "order_id": order.order_id if order else event.order_id,
            "outcome": str(outcome),
        },
    )
    return outcome


def complete_by_admin(admin_id: str, order_id: str) -> Order:
    """Credit an order by hand, through the same transaction as a PAID event (ledger entry
    `topup#<order>`), so it credits at most once; an already paid order is returned unchanged.
    """
    order = orders.find_order(order_id)
    if order is None:
        raise NotFound("No such order.")
    if order.status in (orders.REFUNDED, orders.DISPUTED):
        raise OrderNotCompletable()
    if order.status == orders.PAID:
        outcome = Outcome.DUPLICATE
    else:
        event = PaymentEvent(
            provider=ADMIN_PROVIDER,
            event_id=f"admin:{order_id}",
            type=EventType.PAID,
            order_id=order_id,
            amount=money.parse(order.pay_money, order.currency),
            currency=order.currency,
        )
        outcome = _credit(order, event, admin=True)
    current = orders.find_order(order_id)
    if current is None or current.status != orders.PAID:
        raise OrderNotCompletable("The order changed state and cannot be completed.")
    record_audit(
        admin_id,
        "topup.complete",
        order_id,
        {"outcome": str(outcome), "user_id": current.user_id, "quota": int(current.quota)},
    )
    return current


# ---------------------------------------------------------------- internals


def _find_order(event: PaymentEvent) -> Order | None:
    if event.order_id:
        order = orders.find_order(event.order_id)
        if order is not None:
            return order
    if event.provider_payment_id:
        # by_payment is keys-only: find the order id, then read the order consistently.
        for hit in Order.by_payment.query(event.provider_payment_id, limit=5):
            order = orders.find_order(hit.order_id)
            if order is not None and order.method == event.provider:
                return order
    return None


def _mismatch(order: Order, event: PaymentEvent) -> str | None:
    """Why a payment does not match its order (None when it matches exactly)."""
    if event.provider != order.method:
        return "provider"
    if event.currency is None or event.currency.upper() != order.currency.upper():
        return "currency"
    if event.amount is None or event.amount != money.parse(order.pay_money, order.currency):
        return "amount"
    return None


def _credit(order: Order, event: PaymentEvent, *, admin: bool = False) -> Outcome:
    problem = None if admin else _mismatch(order, event)
    if problem is not None:
        return _dispute_mismatch(order, event, problem)
    if order.status != orders.PENDING and not (
        admin and order.status in (orders.FAILED, orders.EXPIRED)
    ):
        return _already_closed(order, event)

    # The extra changes depend on the account (first paid order → bonuses): if another credit
    # of the same user wins the race for one of them, re-read and rebuild.
    for _ in range(_REBUILD_ATTEMPTS):
        outcome = _try_credit(order, event, admin=admin)
        if outcome is not None:
            return outcome
    raise ledger.LedgerContention("the account kept changing; try again")


def _try_credit(order: Order, event: PaymentEvent, *, admin: bool) -> Outcome | None:
    account = ledger.read_account(order.user_id)
    at = clock.iso()
    changes = [
        ledger.Change(
            user_id=order.user_id,
            entry_id=f"topup#{order.order_id}",
            kind=ledger.EntryKind.TOPUP,
            delta=int(order.quota),
            ref=order.order_id,
            counters={"paid_orders": 1},
        ),
        *extra_changes_for_credit(order, account),
    ]
    condition: Condition
    if admin:
        # An admin may complete an order whose session failed or expired (paid out of band).
        condition = Order.status.is_in(orders.PENDING, orders.FAILED, orders.EXPIRED)
    else:
        condition = (Order.status == orders.PENDING) & (Order.method == event.provider)
    actions: list[Action] = [
        Order.status.set(orders.PAID),
        Order.paid_at.set(at),
        Order.updated_at.set(at),
    ]
    if event.provider_payment_id:
        actions.append(Order.provider_payment_id.set(event.provider_payment_id))
    try:
        ledger.apply(
            changes,
            extra=[
                ledger.TxOp(
                    label="order", op="update", model=order, condition=condition, actions=actions
                )
            ],
            accounts={order.user_id: account},
        )
    except ledger.DuplicateEntry as duplicate:
        if duplicate.entry_id == f"topup#{order.order_id}":
            return Outcome.DUPLICATE
        return None  # a bonus entry was written by a concurrent credit: rebuild
    except ledger.ConditionFailed:
        current = orders.find_order(order.order_id)
        if current is not None and current.status != orders.PENDING and current.paid_at:
            return Outcome.DUPLICATE  # credited by a concurrent delivery
        return Outcome.IGNORED
    _metric("PaymentCredited", event.provider)
    return Outcome.CREDITED


def _already_closed(order: Order, event: PaymentEvent) -> Outcome:
    if order.status == orders.PAID or (
        order.status in (orders.REFUNDED, orders.DISPUTED) and order.paid_at
    ):
        return Outcome.DUPLICATE
    # Money was taken for an order we had closed (failed/expired/mismatch): never credit it
    # automatically, but make it loud so an operator can complete it by hand.
    _metric("PaymentOnClosedOrder", event.provider)
    logger.error(
        "payment for an order that is not pending",
        extra={"order_id": order.order_id, "status": order.status, "provider": event.provider},
    )
    return Outcome.IGNORED


def _dispute_mismatch(order: Order, event: PaymentEvent, reason: str) -> Outcome:
    _metric("PaymentMismatch", event.provider)
    logger.error(
        "payment does not match its order: not credited",
        extra={
            "order_id": order.order_id,
            "reason": reason,
            "provider": event.provider,
            "method": order.method,
            "expected": f"{order.pay_money} {order.currency}",
            "received": f"{event.amount} {event.currency}",
            "event_id": event.event_id,
        },
    )
    actions: list[Action] = [
        Order.status.set(orders.DISPUTED),
        Order.failure_reason.set(f"mismatch:{reason}"),
        Order.updated_at.set(clock.iso()),
    ]
    if event.provider_payment_id and event.provider == order.method:
        actions.append(Order.provider_payment_id.set(event.provider_payment_id))
    if _update_if(order, actions, Order.status == orders.PENDING):
        return Outcome.MISMATCH
    return Outcome.IGNORED


def _close(order: Order, event: PaymentEvent, status: str) -> Outcome:
    """pending → failed/expired; from any other state (paid above all) nothing changes."""
    if event.provider != order.method:
        logger.error(
            "event from another provider than the order's",
            extra={"order_id": order.order_id, "provider": event.provider},
        )
        return Outcome.IGNORED
    actions: list[Action] = [
        Order.status.set(status),
        Order.failure_reason.set(event.detail.get("stripe_type") or str(event.type)),
        Order.updated_at.set(clock.iso()),
    ]
    condition = (Order.status == orders.PENDING) & (Order.method == event.provider)
    if _update_if(order, actions, condition):
        return Outcome.FAILED if status == orders.FAILED else Outcome.EXPIRED
    return Outcome.IGNORED


def _reverse(order: Order, event: PaymentEvent) -> Outcome:
    """A refund or dispute: take back a credited order's quota once (may go below zero)."""
    if event.provider != order.method:
        logger.error(
            "reversal from another provider than the order's",
            extra={"order_id": order.order_id, "provider": event.provider},
        )
        return Outcome.IGNORED
    status = orders.REFUNDED if event.type is EventType.REFUNDED else orders.DISPUTED
    if order.status == orders.PENDING:
        # Refunded before we saw it paid: close it so a late PAID event cannot credit it.
        actions: list[Action] = [
            Order.status.set(status),
            Order.failure_reason.set(f"{status}_before_paid"),
            Order.updated_at.set(clock.iso()),
        ]
        if _update_if(order, actions, Order.status == orders.PENDING):
            logger.warning("reversal of an uncredited order", extra={"order_id": order.order_id})
            return Outcome.CLOSED
        refreshed = orders.find_order(order.order_id)
        if refreshed is None:
            return Outcome.IGNORED
        order = refreshed
    if order.status not in (orders.PAID, orders.REFUNDED, orders.DISPUTED):
        logger.warning(
            "reversal of an order that was never credited",
            extra={"order_id": order.order_id, "status": order.status},
        )
        return Outcome.IGNORED

    account = ledger.read_account(order.user_id)
    changes = [
        ledger.Change(
            user_id=order.user_id,
            entry_id=f"reversal#{order.order_id}",
            kind=ledger.EntryKind.REVERSAL,
            delta=-int(order.quota),
            ref=order.order_id,
            may_go_negative=True,
        ),
        *extra_changes_for_reversal(order, account),
    ]
    reverse_actions: list[Action] = [Order.status.set(status), Order.updated_at.set(clock.iso())]
    try:
        ledger.apply(
            changes,
            extra=[
                ledger.TxOp(
                    label="order",
                    op="update",
                    model=order,
                    condition=Order.status == orders.PAID,
                    actions=reverse_actions,
                )
            ],
            accounts={order.user_id: account},
        )
    except ledger.DuplicateEntry:
        return Outcome.DUPLICATE
    except ledger.ConditionFailed:
        return Outcome.IGNORED
    _metric("PaymentReversed", event.provider)
    return Outcome.REVERSED


def _update_if(order: Order, actions: list[Action], condition: Condition) -> bool:
    """A conditional update of the order; False when the condition did not hold."""
    try:
        order.update(actions=actions, condition=condition)
    except UpdateError as exc:
        if exc.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
    return True


def _metric(name: str, provider: str) -> None:
    try:
        with single_metric(name=name, unit=MetricUnit.Count, value=1) as metric:
            metric.add_dimension(name="provider", value=provider)
    except Exception:  # a metric must never decide whether money is credited
        logger.warning("metric not emitted", extra={"metric": name})
