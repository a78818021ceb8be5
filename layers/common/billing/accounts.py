"""Accounts: reading an account, and its ledger history (billing.account_view renders the
account itself: its grant view needs the ledger, which a caller that only checks an account
exists, such as checkout, need not import).

Accounts are created by `billing.referral.create_account` (an account is bound to its
inviter once, at creation).
"""

from __future__ import annotations

from typing import Any

from pynamodb.attributes import MapAttribute
from pynamodb.exceptions import DoesNotExist

from billing.errors import AccountNotFound
from billing.models import Account, LedgerEntry
from billing.pagination import newest_first


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
        "grants": _entry_grants(entry),
    }


def _entry_grants(entry: LedgerEntry) -> dict[str, int]:
    raw = entry.grants
    values = raw.as_dict() if isinstance(raw, MapAttribute) else dict(raw or {})
    return {str(grant_id): int(delta) for grant_id, delta in values.items()}


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
