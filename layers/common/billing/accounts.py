"""Accounts: reading and rendering an account, and its ledger history.

Accounts are created by `billing.referral.create_account` (an account is bound to its
inviter once, at creation).
"""

from __future__ import annotations

from typing import Any

from pynamodb.exceptions import DoesNotExist

from billing.errors import AccountNotFound
from billing.models import Account, LedgerEntry
from billing.pagination import newest_first


def render_account(account: Account) -> dict[str, Any]:
    return {
        "user_id": account.user_id,
        "quota": int(account.quota),
        "used_quota": int(account.used_quota),
        "request_count": int(account.request_count),
        "held_quota": int(account.held_quota),
        "aff_code": account.aff_code,
        "aff_quota": int(account.aff_quota),
        "aff_history_quota": int(account.aff_history_quota),
        "aff_count": int(account.aff_count),
        "inviter_id": account.inviter_id,
        "status": account.status,
        "created_at": account.created_at,
    }


def get_account(user_id: str) -> Account:
    try:
        return Account.get(user_id, consistent_read=True)
    except DoesNotExist as exc:
        raise AccountNotFound() from exc


def render_entry(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "id": entry.entry_id,
        "kind": entry.kind,
        "balance": entry.balance,
        "delta": int(entry.delta),
        "balance_after": int(entry.balance_after),
        "ref": entry.ref,
        "created_at": entry.created_at,
    }


def list_ledger(user_id: str, limit: int, cursor: str | None) -> dict[str, Any]:
    # by_seq is a local index: read strongly, so a change shows in the history at once.
    return newest_first(
        LedgerEntry.by_seq.query,
        "user_id",
        user_id,
        limit,
        cursor,
        render_entry,
        consistent_read=True,
    )
