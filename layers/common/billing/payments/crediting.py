"""Apply one verified payment event to its order, exactly once (DESIGN invariants 1, 2, 5, 6).

A payment credits in ONE ledger transaction: the order's pending→paid (conditional on the
order still being open and belonging to the event's provider) + the ledger entry
`topup#<order>` (attribute_not_exists) + the balance, plus whatever `extra_changes_for_credit`
adds (the referral rebate and first-order bonuses join here). So duplicates, retries and
out-of-order events change nothing, and a paid amount, currency or provider that differs from
the order credits nothing: the order becomes `disputed` instead. So does a payment that reached
us after the order expired (`paid_after_expiry`): it is never credited at the stale price by
itself; an admin may complete such an order (and a mismatched one), once.

Refunds reverse in proportion (billing.payments.refunds): each refund notification is at most
one step, written in one transaction: `reversal#<order>#<step>` on the buyer's quota, the
inviter's clawback of the rebate in the same proportion, and the order's `refunded_money`
moved from exactly the value the step was computed from (a condition), so concurrent or
repeated notifications apply once. A step that leaves nothing of the credit makes the order
`refunded` (or `disputed`, for a chargeback) and also takes back the first-order bonuses the
order paid.

What cannot be applied yet is raised, never acknowledged: a payment, refund or dispute that
matches no order (its paid event still queued, or an order completed by hand without a payment
id), a partial refund of an order not credited yet, a refund whose amount cannot be read. SQS
retries the record and, after maxReceiveCount, moves it to the DLQ, which alarms. Transient
failures (LedgerContention, DynamoDB throttling or faults) propagate the same way. Events that
can never change anything (duplicates, an order in a state that does not allow them) are
acknowledged with a log line.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum

from aws_lambda_powertools import Logger
from pynamodb.exceptions import UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action

from billing import clock, grant_history, grants, ledger, metrics, money, retry
from billing.errors import DomainError, NotFound
from billing.facts import ErrorCode, OrderStatus
from billing.metrics import Metric
from billing.models import Account, Order
from billing.ops import record_audit
from billing.payments import orders, refunds
from billing.payments.providers.base import EventType, PaymentEvent
from billing.referral import clawback_changes, credit_changes

logger = Logger(child=True)

ADMIN_PROVIDER = "admin"
PAID_AFTER_EXPIRY = "paid_after_expiry"
MISMATCH_PREFIX = "mismatch:"
CHARGEBACK = "chargeback"
REFUNDED_BEFORE_CREDIT = "refunded_before_credit"
_REBUILD_ATTEMPTS = 5
_REVERSAL_ATTEMPTS = 30


class Outcome(StrEnum):
    CREDITED = "credited"
    DUPLICATE = "duplicate"  # already applied: nothing changed
    FAILED = "failed"
    EXPIRED = "expired"
    MISMATCH = "mismatch"  # order disputed, nothing credited
    LATE = "late"  # paid after the order expired: disputed, nothing credited
    REVERSED = "reversed"  # a reversal step (partial or complete) was applied
    CLOSED = "closed"  # a refund/dispute of a never-credited order: closed, no reversal
    IGNORED = "ignored"  # the order's state does not allow it: nothing changed
    UNKNOWN_ORDER = "unknown_order"  # a failure/expiry of an order we do not have: nothing to do


class OrderNotCompletable(DomainError):
    code = ErrorCode.ORDER_NOT_COMPLETABLE.value
    status = 409
    message = "This order was refunded or disputed and cannot be completed."


class NotApplicableYet(Exception):
    """The event cannot be applied now (no matching order, or not credited yet): it is retried
    and ends in the credit DLQ (alarm) for an operator, never acknowledged and lost."""


# ---------------------------------------------------------------- extension hooks


def extra_changes_for_credit(order: Order, account: Account) -> list[ledger.Change]:
    """Changes that join the credit of `order` in its transaction: the inviter's rebate
    (`referral_reward#<order>` on aff_quota) and first-order bonuses."""
    return credit_changes(order, account)


def extra_changes_for_reversal(
    order: Order, account: Account, step: refunds.Step
) -> tuple[list[ledger.Change], dict[str, Account]]:
    """Changes that join a reversal step of `order`: the clawback of its rebate in the same
    proportion (and of its first-order bonuses once nothing of the credit is left), with the
    accounts they were computed from."""
    return clawback_changes(order, account, before=step.before, after=step.after, step=step.key)


# ---------------------------------------------------------------- entry points


def apply_event(event: PaymentEvent) -> Outcome:
    """Apply one event; returns what happened. Raises NotApplicableYet for an event to retry
    (and park in the DLQ), and on transient/unexpected errors."""
    if event.provider == ADMIN_PROVIDER:
        # Only complete_by_admin may credit as the admin; never a queued message.
        logger.error("queued event claims the admin provider", extra={"event_id": event.event_id})
        return Outcome.IGNORED
    order = _find_order(event)
    if order is None:
        outcome = _unmatched(event)
    elif event.type is EventType.PAID:
        outcome = _credit(order, event)
    elif event.type is EventType.FAILED:
        outcome = _close(order, event, OrderStatus.FAILED)
    elif event.type is EventType.EXPIRED:
        outcome = _close(order, event, OrderStatus.EXPIRED)
    else:
        outcome = _reverse(order, event)
    logger.info(
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


def completable(order: Order) -> bool:
    """An admin may credit an order that was never credited and whose payment may have been
    taken: pending, failed, expired, or disputed because the payment did not match or came
    late. Never a refunded one, nor one disputed by a chargeback."""
    if order.paid_at:
        return False
    if order.status in (OrderStatus.PENDING, OrderStatus.FAILED, OrderStatus.EXPIRED):
        return True
    reason = order.failure_reason or ""
    return order.status == OrderStatus.DISPUTED and (
        reason.startswith(MISMATCH_PREFIX) or reason == PAID_AFTER_EXPIRY
    )


def complete_by_admin(admin_id: str, order_id: str) -> Order:
    """Credit an order by hand, through the same transaction as a PAID event (ledger entry
    `topup#<order>`), so it credits at most once; an already paid order is returned unchanged.
    """
    order = orders.find_order(order_id)
    if order is None:
        raise NotFound("No such order.")
    if order.status == OrderStatus.PAID:
        outcome = Outcome.DUPLICATE
    elif not completable(order):
        raise OrderNotCompletable()
    else:
        event = PaymentEvent(
            provider=ADMIN_PROVIDER,
            event_id=f"admin:{order_id}",
            type=EventType.PAID,
            order_id=order_id,
            amount=money.parse(order.pay_money, order.currency),
            currency=order.currency,
        )
        outcome = _credit_by_admin(order, event)
    current = orders.find_order(order_id)
    if current is None or current.status != OrderStatus.PAID:
        raise OrderNotCompletable("The order changed state and cannot be completed.")
    record_audit(
        admin_id,
        "topup.complete",
        order_id,
        {
            "outcome": str(outcome),
            "user_id": current.user_id,
            "quota": int(current.quota),
            "previous_status": order.status,
            "failure_reason": order.failure_reason or "",
        },
    )
    return current


# ---------------------------------------------------------------- finding the order


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


def _unmatched(event: PaymentEvent) -> Outcome:
    """An event that names no order we have. Money moved (a payment, refund or dispute):
    raise, so it is retried (its order's paid event may still be queued) and then kept in
    the DLQ. A failure or expiry of an unknown order changes nothing: acknowledged."""
    if event.type in (EventType.FAILED, EventType.EXPIRED):
        logger.warning(
            "failure or expiry of an unknown order",
            extra={"provider": event.provider, "event_id": event.event_id},
        )
        return Outcome.UNKNOWN_ORDER
    metrics.count(Metric.PAYMENT_EVENTS_UNMATCHED, provider=event.provider)
    logger.warning(
        "payment event matches no order yet: retried, then kept in the DLQ",
        extra={
            "provider": event.provider,
            "event_id": event.event_id,
            "type": str(event.type),
            "order_id": event.order_id,
        },
    )
    raise NotApplicableYet(f"{event.type} event {event.event_id} matches no order")


# ---------------------------------------------------------------- credit


def _mismatch(order: Order, event: PaymentEvent) -> str | None:
    """Why a payment does not match its order (None when it matches exactly)."""
    if event.provider != order.method:
        return "provider"
    if event.currency is None or event.currency.upper() != order.currency.upper():
        return "currency"
    if event.amount is None or event.amount != money.parse(order.pay_money, order.currency):
        return "amount"
    return None


def _late(order: Order, event: PaymentEvent) -> bool:
    """The payment reached us after the order's lifetime (when it reached us, not when the
    queue delivered it: a payment on time stays on time however slow the queue)."""
    deadline = orders.expires_at(order)
    if deadline is None:
        return False
    return (event.received_at or clock.iso()) > deadline


def _open_condition(order: Order) -> Condition | None:
    """The condition under which a payment may still credit `order` (None: it may not):
    pending, or expired by its lifetime only (then the payment must have been on time)."""
    if order.status == OrderStatus.PENDING:
        return Order.status == OrderStatus.PENDING
    if order.status == OrderStatus.EXPIRED and order.failure_reason == orders.EXPIRED_BY_TTL:
        return (Order.status == OrderStatus.EXPIRED) & (
            Order.failure_reason == orders.EXPIRED_BY_TTL
        )
    return None


def _credit(order: Order, event: PaymentEvent) -> Outcome:
    # Money was taken for an expired order: never at the stale price by itself. An order
    # expired by its lifetime (not by the provider) and paid in time still credits.
    if order.status == OrderStatus.EXPIRED and (
        order.failure_reason != orders.EXPIRED_BY_TTL or _late(order, event)
    ):
        return _dispute(order, event, PAID_AFTER_EXPIRY, Order.status == OrderStatus.EXPIRED)
    condition = _open_condition(order)
    if condition is None:
        return _already_closed(order, event)
    problem = _mismatch(order, event)
    if problem is not None:
        return _dispute(order, event, f"{MISMATCH_PREFIX}{problem}", condition)
    if _late(order, event):
        return _dispute(order, event, PAID_AFTER_EXPIRY, condition)
    return _credit_with_rebuilds(
        order, event, condition & (Order.method == event.provider) & Order.paid_at.does_not_exist()
    )


def _credit_by_admin(order: Order, event: PaymentEvent) -> Outcome:
    # An admin may complete any order `completable` allows (paid out of band, paid late, or
    # paid a different amount), whatever its lifetime.
    condition = (
        Order.status.is_in(OrderStatus.PENDING, OrderStatus.FAILED, OrderStatus.EXPIRED)
        | (
            (Order.status == OrderStatus.DISPUTED)
            & (
                Order.failure_reason.startswith(MISMATCH_PREFIX)
                | (Order.failure_reason == PAID_AFTER_EXPIRY)
            )
        )
    ) & Order.paid_at.does_not_exist()
    return _credit_with_rebuilds(order, event, condition)


def _credit_with_rebuilds(order: Order, event: PaymentEvent, condition: Condition) -> Outcome:
    # The extra changes depend on the account (first paid order → bonuses): if another credit
    # of the same user wins the race for one of them, re-read and rebuild.
    for _ in range(_REBUILD_ATTEMPTS):
        outcome = _try_credit(order, event, condition)
        if outcome is not None:
            return outcome
    raise ledger.LedgerContention("the account kept changing; try again")


def _try_credit(order: Order, event: PaymentEvent, condition: Condition) -> Outcome | None:
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
    actions: list[Action] = [
        Order.status.set(OrderStatus.PAID),
        Order.paid_at.set(at),
        Order.updated_at.set(at),
        Order.pending_shard.remove(),
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
        if current is not None and current.paid_at:
            return Outcome.DUPLICATE  # credited by a concurrent delivery
        return Outcome.IGNORED
    metrics.count(Metric.TOPUPS_CREDITED, provider=event.provider)
    metrics.count(Metric.TOPUP_QUOTA_CREDITED, int(order.quota), provider=event.provider)
    return Outcome.CREDITED


def _already_closed(order: Order, event: PaymentEvent) -> Outcome:
    if order.paid_at:
        _remember_payment(order, event)
        return Outcome.DUPLICATE
    # Money was taken for an order we had closed (failed, disputed, refunded before it was
    # paid): never credit it automatically, but make it loud so an operator can look.
    metrics.count(Metric.PAYMENTS_ON_CLOSED_ORDERS, provider=event.provider)
    logger.error(
        "payment for an order that is not pending",
        extra={"order_id": order.order_id, "status": order.status, "provider": event.provider},
    )
    return Outcome.IGNORED


def _remember_payment(order: Order, event: PaymentEvent) -> None:
    """An order credited by hand learns its payment id from the provider's own paid event,
    so that the payment's refund or chargeback, matched by it, finds the order."""
    if order.provider_payment_id or not event.provider_payment_id:
        return
    if event.provider != order.method:
        return
    _update_if(
        order,
        [Order.provider_payment_id.set(event.provider_payment_id)],
        Order.provider_payment_id.does_not_exist() & Order.paid_at.exists(),
    )


def _dispute(order: Order, event: PaymentEvent, reason: str, condition: Condition) -> Outcome:
    """Money was taken but must not credit by itself: the order becomes `disputed` with the
    reason, for an admin to complete (or refund)."""
    late = reason == PAID_AFTER_EXPIRY
    metrics.count(
        Metric.ORDERS_DISPUTED,
        provider=event.provider,
        reason=PAID_AFTER_EXPIRY if late else "mismatch",
    )
    logger.error(
        "payment not credited: the order is disputed",
        extra={
            "order_id": order.order_id,
            "reason": reason,
            "provider": event.provider,
            "method": order.method,
            "expected": f"{order.pay_money} {order.currency}",
            "received": f"{event.amount} {event.currency}",
            "expires_at": order.expires_at,
            "received_at": event.received_at,
            "event_id": event.event_id,
        },
    )
    actions: list[Action] = [
        Order.status.set(OrderStatus.DISPUTED),
        Order.failure_reason.set(reason),
        Order.pending_shard.remove(),
        Order.updated_at.set(clock.iso()),
    ]
    if event.provider_payment_id and event.provider == order.method:
        # So that the provider's refund or chargeback of this payment finds the order.
        actions.append(Order.provider_payment_id.set(event.provider_payment_id))
    if _update_if(order, actions, condition & Order.paid_at.does_not_exist()):
        return Outcome.LATE if late else Outcome.MISMATCH
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
        Order.pending_shard.remove(),
        Order.updated_at.set(clock.iso()),
    ]
    condition = (Order.status == OrderStatus.PENDING) & (Order.method == event.provider)
    if _update_if(order, actions, condition):
        return Outcome.FAILED if status == OrderStatus.FAILED else Outcome.EXPIRED
    return Outcome.IGNORED


# ---------------------------------------------------------------- refunds and disputes


def _refund_of(event: PaymentEvent) -> refunds.Refund:
    return refunds.Refund(
        amount=event.amount,
        cumulative=event.cumulative,
        full=event.full_refund,
        refund_id=event.refund_id,
    )


def _reverse(order: Order, event: PaymentEvent) -> Outcome:
    """A refund or dispute: take back the credited share of the money returned, once."""
    if event.provider != order.method:
        logger.error(
            "reversal from another provider than the order's",
            extra={"order_id": order.order_id, "provider": event.provider},
        )
        return Outcome.IGNORED
    if (
        event.type is EventType.REFUNDED
        and event.currency
        and event.currency.upper() != order.currency.upper()
    ):
        raise NotApplicableYet(
            f"refund {event.event_id} in {event.currency} of an order in {order.currency}"
        )
    if event.type is EventType.REFUNDED and not (
        event.full_refund or event.cumulative or event.refund_id
    ):
        # A partial refund that cannot be told from a repeat of itself: never guess.
        raise NotApplicableYet(f"refund {event.event_id} carries no refund id")
    for attempt in range(_REVERSAL_ATTEMPTS):
        if order.paid_at:
            outcome = _reverse_credited(order, event)
        else:
            outcome = _reverse_uncredited(order, event)
        if outcome is not None:
            return outcome
        # Another step of this order (or a change of an account) won: back off, re-read.
        retry.pause(attempt, base=0.005, cap=0.2)
        refreshed = orders.find_order(order.order_id)
        if refreshed is None:
            raise NotApplicableYet(f"order {order.order_id} vanished")
        order = refreshed
    raise ledger.LedgerContention("the order kept changing; try again")


def _step(order: Order, event: PaymentEvent) -> refunds.Step | None:
    paid = money.parse(order.pay_money, order.currency)
    refunded = Decimal(order.refunded_money) if order.refunded_money else Decimal(0)
    if event.type is EventType.DISPUTED:
        return refunds.dispute_step(paid, refunded)

    def key_of(total: Decimal) -> str:
        return str(money.to_minor(total, order.currency, order.method))

    try:
        return refunds.refund_step(
            paid, refunded, frozenset(order.refund_ids or ()), _refund_of(event), key_of
        )
    except (refunds.UnreadableRefund, ValueError) as exc:
        raise NotApplicableYet(f"refund {event.event_id}: {exc}") from exc


def _order_moves(
    order: Order, event: PaymentEvent, step: refunds.Step
) -> tuple[list[Action], Condition]:
    """The order's update for a step, conditional on exactly the state it was computed from."""
    actions: list[Action] = [Order.updated_at.set(clock.iso())]
    if step.complete:
        status = OrderStatus.DISPUTED if event.type is EventType.DISPUTED else OrderStatus.REFUNDED
        actions.append(Order.status.set(status))
        if event.type is EventType.DISPUTED:
            actions.append(Order.failure_reason.set(CHARGEBACK))
    if event.type is EventType.REFUNDED:
        actions.append(
            Order.refunded_money.set(
                money.format_exact(step.refunded_after, order.currency, order.method)
            )
        )
    if step.refund_id is not None:
        actions.append(Order.refund_ids.add({step.refund_id}))
    condition = Order.status == order.status
    if order.refunded_money:
        condition &= Order.refunded_money == order.refunded_money
    else:
        condition &= Order.refunded_money.does_not_exist()
    if step.refund_id is not None:
        condition &= ~Order.refund_ids.contains(step.refund_id)
    return actions, condition


def _reverse_credited(order: Order, event: PaymentEvent) -> Outcome | None:
    """One step of a credited order's reversal; None when the order changed under us."""
    if order.status != OrderStatus.PAID:
        return Outcome.DUPLICATE  # already all taken back (refunded or charged back)
    step = _step(order, event)
    if step is None:
        return Outcome.DUPLICATE  # a repeated, stale or already counted refund
    account = ledger.read_account(order.user_id)
    clawback, read = extra_changes_for_reversal(order, account, step)
    changes = [
        ledger.Change(
            user_id=order.user_id,
            entry_id=f"reversal#{order.order_id}#{step.key}",
            kind=ledger.EntryKind.REVERSAL,
            delta=-step.taken(int(order.quota)),
            ref=order.order_id,
            may_go_negative=True,
            # Its own order's paid grant first (or the grant it merged into at the bound).
            own_grant=grant_history.holder(
                order.user_id, grants.grant_id_for(f"topup#{order.order_id}")
            ),
        ),
        *clawback,
    ]
    actions, condition = _order_moves(order, event, step)
    try:
        # One attempt: the clawback split was computed from the inviter's balances as read.
        ledger.apply(
            changes,
            extra=[
                ledger.TxOp(
                    label="order", op="update", model=order, condition=condition, actions=actions
                )
            ],
            accounts={**read, order.user_id: account},
            max_attempts=1,
        )
    except (ledger.DuplicateEntry, ledger.ConditionFailed, ledger.LedgerContention):
        return None  # another step (or this one) won: re-read the order and look again
    metrics.count(Metric.REFUNDS_REVERSED, provider=event.provider)
    if event.type is EventType.DISPUTED:
        metrics.count(Metric.ORDERS_DISPUTED, provider=event.provider, reason=CHARGEBACK)
    logger.info(
        "credit reversed in proportion",
        extra={
            "order_id": order.order_id,
            "step": step.key,
            "refunded_money": str(step.refunded_after),
            "complete": step.complete,
        },
    )
    return Outcome.REVERSED


def _reverse_uncredited(order: Order, event: PaymentEvent) -> Outcome | None:
    """A refund or dispute of money we never credited; None when the order changed."""
    full = event.type is EventType.REFUNDED and event.full_refund
    if order.status == OrderStatus.PENDING:
        if not full:
            # Most likely the payment event is still on its way: credit first, then reverse.
            raise NotApplicableYet(
                f"{event.type} {event.event_id} of order {order.order_id} before its payment"
            )
        # All of it came back before we saw it paid: close it, so a late payment event
        # cannot credit it.
        closing: list[Action] = [
            Order.status.set(OrderStatus.REFUNDED),
            Order.failure_reason.set(f"{OrderStatus.REFUNDED}_before_paid"),
            Order.refunded_money.set(order.pay_money),
            Order.pending_shard.remove(),
            Order.updated_at.set(clock.iso()),
        ]
        if not _update_if(order, closing, Order.status == OrderStatus.PENDING):
            return None
        logger.warning("refund of an uncredited order", extra={"order_id": order.order_id})
        return Outcome.CLOSED
    if order.status == OrderStatus.DISPUTED and completable(order):
        # Taken but never credited (mismatch, late): once money goes back, an admin must no
        # longer credit it; a full refund closes it.
        marking: list[Action] = [Order.updated_at.set(clock.iso())]
        if full:
            marking += [
                Order.status.set(OrderStatus.REFUNDED),
                Order.refunded_money.set(order.pay_money),
            ]
        reason = CHARGEBACK if event.type is EventType.DISPUTED else REFUNDED_BEFORE_CREDIT
        marking.append(Order.failure_reason.set(reason))
        condition = (Order.status == OrderStatus.DISPUTED) & (
            Order.failure_reason == (order.failure_reason or "")
        )
        if not _update_if(order, marking, condition & Order.paid_at.does_not_exist()):
            return None
        logger.warning(
            "refund or chargeback of an uncredited disputed order",
            extra={"order_id": order.order_id, "previous_reason": order.failure_reason},
        )
        return Outcome.CLOSED
    logger.warning(
        "reversal of an order that was never credited",
        extra={"order_id": order.order_id, "status": order.status},
    )
    return Outcome.IGNORED


# ---------------------------------------------------------------- small helpers


def _update_if(order: Order, actions: list[Action], condition: Condition) -> bool:
    """A conditional update of the order; False when the condition did not hold."""
    try:
        # The order's credit or reversal transaction in flight makes it TransactionConflict.
        retry.through_conflicts(lambda: order.update(actions=actions, condition=condition))
    except UpdateError as exc:
        if exc.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
    return True
