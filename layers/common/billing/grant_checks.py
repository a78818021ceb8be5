"""Reconciliation of an account's credit grants with its quota ledger (billing.grants.problems).

Read-only: imports nothing that writes (billing.ops.reconciliation relies on that)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pynamodb.attributes import MapAttribute

from billing import clock
from billing import grants as grant_math
from billing.models import Account


def _plain(raw: Any) -> dict[str, Any]:
    if isinstance(raw, MapAttribute):
        raw = raw.as_dict()
    return {
        str(key): _plain(value) if isinstance(value, Mapping | MapAttribute) else value
        for key, value in dict(raw or {}).items()
    }


class QuotaEntry(Protocol):
    """What the check reads of a ledger entry (a LedgerEntry, or reconciliation's own)."""

    @property
    def entry_id(self) -> str: ...
    @property
    def delta(self) -> Any: ...
    @property
    def balance(self) -> Any: ...
    @property
    def grants(self) -> Any: ...


def grant_problems(
    account: Account, entries: Sequence[QuotaEntry]
) -> list[tuple[str, str, Any, Any]]:
    """Reconciliation of an account's grants with its quota ledger (billing.grants.problems)."""
    now = int(clock.now().timestamp())
    held = None if account.grants is None else grant_math.decode(_plain(account.grants))
    moved = [
        grant_math.Moved(entry.entry_id, int(entry.delta), _deltas(entry))
        for entry in entries
        if str(entry.balance) == "quota"
    ]
    return grant_math.problems(int(account.quota), held, moved, now)


def _deltas(entry: QuotaEntry) -> dict[str, int] | None:
    raw = entry.grants
    if raw is None:
        return None
    return {str(grant_id): int(delta) for grant_id, delta in _plain(raw).items()}
