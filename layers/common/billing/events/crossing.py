"""Which events a run of ledger entries causes: pure, so the rules read as a table.

- `balance.low`: an entry takes `quota` from at or above the threshold to below it, while the
  alert is armed; it is then disarmed until an entry takes the balance above the threshold.
- `balance.depleted`: an entry takes `quota` from above zero to zero or below, while armed;
  re-armed once the balance is above zero again.
- `topup.paid` for a top-up credit, `topup.refunded` for each reversal step of a refunded
  (or disputed) top-up.

Each event's id is derived from its type, user and the ledger entry that caused it, so the
same entry always yields the same id, however often the stream delivers it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

from billing.facts import EntryKind

# Fixed namespace: ids must stay the same across deployments and retries.
_NAMESPACE = uuid.UUID("5b0f7f8e-8f3c-4f0e-9b5e-2d6f1c0a9e41")

LOW = "balance.low"
DEPLETED = "balance.depleted"
TOPUP_PAID = "topup.paid"
TOPUP_REFUNDED = "topup.refunded"
AUTO_FAILED = "topup.auto_failed"


class Entry(NamedTuple):
    """A ledger entry as its stream record carries it."""

    user_id: str
    entry_id: str
    seq: str
    kind: str
    balance: str
    delta: int
    balance_after: int
    ref: str
    created_at: str
    sequence_number: str  # the stream record's, for partial batch failures


class Arming(NamedTuple):
    low_armed: bool = True
    depleted_armed: bool = True


def event_id(event_type: str, user_id: str, cause: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{event_type}|{user_id}|{cause}"))


def make_event(
    event_type: str, user_id: str, cause: str, quota: int, created_at: str, **extra: Any
) -> dict[str, Any]:
    return {
        "id": event_id(event_type, user_id, cause),
        "type": event_type,
        "user_id": user_id,
        "quota": quota,
        "created_at": created_at,
        **extra,
    }


def _is_order_reversal(entry: Entry) -> bool:
    # The buyer's own reversal of a refunded order (`reversal#<order>#<step>`); rebate
    # clawbacks and bonus reversals are reversals too, but not refunds of a top-up.
    return entry.kind == EntryKind.REVERSAL and entry.entry_id.startswith(f"reversal#{entry.ref}#")


def fold(
    arming: Arming, threshold: int | None, entries: Iterable[Entry]
) -> tuple[Arming, list[dict[str, Any]]]:
    """The arming after `entries` (in ledger order) and the events they cause."""
    events: list[dict[str, Any]] = []
    for entry in entries:
        if entry.balance != "quota" or entry.delta == 0:
            continue
        after = entry.balance_after
        before = after - entry.delta
        if entry.kind == EntryKind.TOPUP and entry.delta > 0:
            events.append(
                make_event(
                    TOPUP_PAID,
                    entry.user_id,
                    entry.entry_id,
                    after,
                    entry.created_at,
                    order_id=entry.ref,
                    delta=entry.delta,
                )
            )
        elif entry.delta < 0 and _is_order_reversal(entry):
            events.append(
                make_event(
                    TOPUP_REFUNDED,
                    entry.user_id,
                    entry.entry_id,
                    after,
                    entry.created_at,
                    order_id=entry.ref,
                    delta=entry.delta,
                )
            )
        if threshold is not None:
            if arming.low_armed and before >= threshold > after:
                events.append(
                    make_event(
                        LOW,
                        entry.user_id,
                        entry.entry_id,
                        after,
                        entry.created_at,
                        threshold=threshold,
                    )
                )
                arming = arming._replace(low_armed=False)
            elif not arming.low_armed and after > threshold:
                arming = arming._replace(low_armed=True)
        if arming.depleted_armed and before > 0 >= after:
            events.append(
                make_event(DEPLETED, entry.user_id, entry.entry_id, after, entry.created_at)
            )
            arming = arming._replace(depleted_armed=False)
        elif not arming.depleted_armed and after > 0:
            arming = arming._replace(depleted_armed=True)
    return arming, events
