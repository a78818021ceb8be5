"""Referral rewards: the rebate on an invited user's purchases, its clawback, and the transfer
of reward quota to the balance.

The rebate and the optional bonuses are extra Changes of the crediting transaction itself, so an
order's credit and its inviter's reward happen together or not at all, exactly once (ledger ids
`referral_reward#<order>`, `signup_bonus#<user>`, `signup_bonus#invitee#<user>`). Bonuses are
paid on the invitee's first paid order, never at sign-up, so throwaway accounts earn nothing.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal

from aws_lambda_powertools import Logger
from pynamodb.exceptions import DoesNotExist

from billing import ledger
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


def clawback_changes(order: Order, account: Account) -> list[ledger.Change]:
    """Take back exactly the rebate paid for `order` (it may take aff_quota below zero)."""
    if not account.inviter_id:
        return []
    try:
        reward = LedgerEntry.get(
            account.inviter_id, f"referral_reward#{order.order_id}", consistent_read=True
        )
    except DoesNotExist:
        return []
    amount = int(reward.delta)
    return [
        ledger.Change(
            user_id=account.inviter_id,
            entry_id=f"referral_clawback#{order.order_id}",
            kind=ledger.EntryKind.REVERSAL,
            delta=-amount,
            balance="aff_quota",
            ref=order.order_id,
            may_go_negative=True,
            counters={"aff_history_quota": -amount},
        )
    ]


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
        raise InsufficientAffQuota() from exc
