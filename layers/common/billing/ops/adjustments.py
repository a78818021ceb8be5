"""Admin adjustments of a balance, through the ledger like every other quota change."""

from __future__ import annotations

from typing import Any

from billing import grant_terms, ledger
from billing.errors import InsufficientQuota, InvalidRequest
from billing.models import Account
from billing.ops.audit import record as record_audit


def adjust(
    admin_id: str, user_id: str, delta: int, reason: str, cause: str, grant: Any = None
) -> Account:
    """Apply one adjustment; `cause` (the request's idempotency key) makes a retry a no-op.

    A positive delta with a `grant` object makes a `promo` grant (priority, expiry); without
    one an `adjustment` grant. A negative delta draws like usage (a `grant` is refused)."""
    stored = grant_terms.parse(grant)
    if stored is not None and delta < 0:
        raise InvalidRequest("A grant object goes with a positive delta only.")
    change = ledger.Change(
        user_id=user_id,
        entry_id=f"adjustment#{cause}",
        kind=ledger.EntryKind.ADJUSTMENT,
        delta=delta,
        ref=reason,
        grant=None if stored is None else grant_terms.terms("promo", stored),
    )
    try:
        applied = ledger.apply([change])
    except ledger.DuplicateEntry:
        return ledger.read_account(user_id)
    except ledger.InsufficientBalance as exc:
        raise InsufficientQuota("The adjustment would take the balance below zero.") from exc
    record_audit(
        admin_id,
        "account.adjust",
        user_id,
        {"delta": delta, "reason": reason, "cause": cause, "grant": stored},
    )
    return applied.accounts[user_id]
