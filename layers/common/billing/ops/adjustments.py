"""Admin adjustments of a balance, through the ledger like every other quota change."""

from __future__ import annotations

from billing import ledger
from billing.errors import InsufficientQuota
from billing.models import Account
from billing.ops.audit import record as record_audit


def adjust(admin_id: str, user_id: str, delta: int, reason: str, cause: str) -> Account:
    """Apply one adjustment; `cause` (the request's idempotency key) makes a retry a no-op."""
    change = ledger.Change(
        user_id=user_id,
        entry_id=f"adjustment#{cause}",
        kind=ledger.EntryKind.ADJUSTMENT,
        delta=delta,
        ref=reason,
    )
    try:
        applied = ledger.apply([change])
    except ledger.DuplicateEntry:
        return ledger.read_account(user_id)
    except ledger.InsufficientBalance as exc:
        raise InsufficientQuota("The adjustment would take the balance below zero.") from exc
    record_audit(
        admin_id, "account.adjust", user_id, {"delta": delta, "reason": reason, "cause": cause}
    )
    return applied.accounts[user_id]
