"""Referral rewards: the rebate on an invited user's purchases, its clawback, and the transfer
of reward quota to the balance.

The rebate and the optional bonuses are extra Changes of the crediting transaction itself, so an
order's credit and its inviter's reward happen together or not at all, exactly once (ledger ids
`referral_reward#<order>`, `signup_bonus#<user>`, `signup_bonus#invitee#<user>`). Bonuses are
paid on the invitee's first paid order, never at sign-up, so throwaway accounts earn nothing.

Refunds take them back in the same transaction as the order's reversal step, in the same
proportion as the money returned (`referral_clawback#<order>#<step>`); once nothing of the
order's credit is left, the bonuses it paid go too (`signup_bonus_reversal#<user>`,
`signup_bonus_reversal#invitee#<user>`). What the inviter already moved to its balance is taken
from `quota` where `aff_quota` cannot cover it (the same id with `#quota`), so a transfer is no
way to keep a rebate whose purchase was refunded.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal
from fractions import Fraction

from aws_lambda_powertools import Logger
from pynamodb.exceptions import DoesNotExist, TransactWriteError
from pynamodb.transactions import TransactWrite

from billing import db, ledger
from billing.errors import InsufficientAffQuota, TransferBelowMinimum
from billing.models import Account, LedgerEntry, Order
from billing.settings import Settings, load_settings

logger = Logger(child=True)


def rebate_for(quota: int, percent: Decimal) -> int:
    """referral_rebate_percent of the credited quota, rounded down."""
    return int((Decimal(quota) * percent / 100).to_integral_value(rounding=ROUND_DOWN))


def _active_inviter(inviter_id: str) -> Account | None:
    try:
        inviter = Account.get(inviter_id, consistent_read=True)
    except DoesNotExist:
        return None
    return inviter if inviter.status == "active" else None


def credit_changes(
    order: Order, account: Account, settings: Settings | None = None
) -> list[ledger.Change]:
    """What joins the credit of `order` (bought by `account`): rebate and first-order bonuses.

    Only invited users' orders carry any (the invitee bonus too, so it cannot be farmed).
    """
    if not account.inviter_id:
        return []
    terms = (settings or load_settings()).referral
    changes: list[ledger.Change] = []
    first_paid_order = int(account.paid_orders) == 0
    if first_paid_order and terms.invitee_bonus:
        changes.append(
            ledger.Change(
                user_id=account.user_id,
                entry_id=f"signup_bonus#{account.user_id}",
                kind=ledger.EntryKind.SIGNUP_BONUS,
                delta=terms.invitee_bonus,
                ref=order.order_id,
            )
        )
    inviter = _active_inviter(account.inviter_id)
    if inviter is None:
        logger.info("no rebate: inviter missing or inactive", extra={"order_id": order.order_id})
        return changes
    rebate = rebate_for(int(order.quota), terms.rebate_percent)
    if rebate > 0:
        changes.append(
            ledger.Change(
                user_id=inviter.user_id,
                entry_id=f"referral_reward#{order.order_id}",
                kind=ledger.EntryKind.REFERRAL_REWARD,
                delta=rebate,
                balance="aff_quota",
                ref=order.order_id,
                counters={"aff_history_quota": rebate},
            )
        )
    if first_paid_order and terms.inviter_bonus:
        changes.append(
            ledger.Change(
                user_id=inviter.user_id,
                entry_id=f"signup_bonus#invitee#{account.user_id}",
                kind=ledger.EntryKind.SIGNUP_BONUS,
                delta=terms.inviter_bonus,
                balance="aff_quota",
                ref=order.order_id,
                counters={"aff_history_quota": terms.inviter_bonus},
            )
        )
    return changes


def _share(total: int, ratio: Fraction) -> int:
    """floor(total x ratio), all of it at 1 (the proportion of a refund)."""
    if ratio >= 1:
        return total
    if ratio <= 0:
        return 0
    return total * ratio.numerator // ratio.denominator


def _entry(user_id: str, entry_id: str) -> LedgerEntry | None:
    try:
        return LedgerEntry.get(user_id, entry_id, consistent_read=True)
    except DoesNotExist:
        return None


def _bonus_paid_by(user_id: str, entry_id: str, order_id: str) -> int:
    """The bonus `entry_id` paid because of `order_id` (0 if none, or another order paid it)."""
    bonus = _entry(user_id, entry_id)
    if bonus is None or bonus.ref != order_id or int(bonus.delta) <= 0:
        return 0
    return int(bonus.delta)


def clawback_changes(
    order: Order, account: Account, *, before: Fraction, after: Fraction, step: str
) -> tuple[list[ledger.Change], dict[str, Account]]:
    """What joins a reversal step of `order` (bought by `account`) that takes the credit from
    `before` to `after` (fractions of it taken back; 1 = all): the rebate's share of the step
    and, once all is taken back, the first-order bonuses the order paid.

    Returns the changes and the accounts they were computed from (the inviter's balances
    decide how much comes from aff_quota and how much from quota): the caller applies them
    conditional on those accounts being unchanged, and rebuilds otherwise.
    """
    changes: list[ledger.Change] = []
    complete = after >= 1
    if complete:
        bonus = _bonus_paid_by(account.user_id, f"signup_bonus#{account.user_id}", order.order_id)
        if bonus:
            changes.append(
                ledger.Change(
                    user_id=account.user_id,
                    entry_id=f"signup_bonus_reversal#{account.user_id}",
                    kind=ledger.EntryKind.REVERSAL,
                    delta=-bonus,
                    ref=order.order_id,
                    may_go_negative=True,
                )
            )
    if not account.inviter_id:
        return changes, {}
    inviter_id = account.inviter_id
    takes: list[tuple[str, int]] = []  # (entry id, quota to take back from the inviter)
    reward = _entry(inviter_id, f"referral_reward#{order.order_id}")
    if reward is not None:
        rebate = int(reward.delta)
        amount = _share(rebate, after) - _share(rebate, before)
        if amount > 0:
            takes.append((f"referral_clawback#{order.order_id}#{step}", amount))
    if complete:
        invitee_entry = f"signup_bonus#invitee#{account.user_id}"
        bonus = _bonus_paid_by(inviter_id, invitee_entry, order.order_id)
        if bonus:
            takes.append((f"signup_bonus_reversal#invitee#{account.user_id}", bonus))
    if not takes:
        return changes, {}
    inviter = ledger.read_account(inviter_id)
    available = max(int(inviter.aff_quota), 0)
    for entry_id, amount in takes:
        from_aff = min(amount, available)
        available -= from_aff
        counters: dict[ledger.Counter, int] = {"aff_history_quota": -amount}
        if from_aff:
            changes.append(
                ledger.Change(
                    user_id=inviter_id,
                    entry_id=entry_id,
                    kind=ledger.EntryKind.REVERSAL,
                    delta=-from_aff,
                    balance="aff_quota",
                    ref=order.order_id,
                    may_go_negative=True,
                    counters=counters,
                )
            )
        if amount > from_aff:
            # Already moved to the balance by a transfer: taken back from there.
            changes.append(
                ledger.Change(
                    user_id=inviter_id,
                    entry_id=f"{entry_id}#quota",
                    kind=ledger.EntryKind.REVERSAL,
                    delta=-(amount - from_aff),
                    ref=order.order_id,
                    may_go_negative=True,
                    counters={} if from_aff else counters,
                )
            )
    return changes, {inviter_id: inviter}


def transfer(user_id: str, quota: int, cause: str) -> Account:
    """Move `quota` from aff_quota to quota: two ledger entries, one transaction.

    `cause` (the request's idempotency key) makes a retried request a no-op.
    """
    minimum = load_settings().referral.min_transfer
    if quota < minimum:
        raise TransferBelowMinimum(f"The minimum transfer is {minimum} quota.")
    changes = [
        ledger.Change(
            user_id=user_id,
            entry_id=f"referral_transfer#{cause}#aff",
            kind=ledger.EntryKind.REFERRAL_TRANSFER,
            delta=-quota,
            balance="aff_quota",
            ref=cause,
        ),
        ledger.Change(
            user_id=user_id,
            entry_id=f"referral_transfer#{cause}",
            kind=ledger.EntryKind.REFERRAL_TRANSFER,
            delta=quota,
            ref=cause,
        ),
    ]
    try:
        return ledger.apply(changes).accounts[user_id]
    except ledger.DuplicateEntry:
        return ledger.read_account(user_id)
    except ledger.InsufficientBalance as exc:
        # A retry of a transfer that was applied, after aff_quota dropped (a later transfer
        # or a clawback): the same request again, not a new one; nothing moves.
        if _applied(user_id, f"referral_transfer#{cause}"):
            return ledger.read_account(user_id)
        raise InsufficientAffQuota() from exc


def _applied(user_id: str, entry_id: str) -> bool:
    """Whether the ledger holds that entry, by a condition check (the transfer function may
    check ledger items, not read them)."""
    try:
        with TransactWrite(connection=db.connection()) as transaction:
            transaction.condition_check(
                LedgerEntry, user_id, entry_id, condition=LedgerEntry.entry_id.exists()
            )
    except TransactWriteError as exc:
        codes = [reason.code for reason in exc.cancellation_reasons or [] if reason is not None]
        if "ConditionalCheckFailed" in codes:
            return False
        raise
    return True
