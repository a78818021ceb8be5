"""Billing events: what the ledger's stream causes (`balance.low`, `balance.depleted`,
`topup.paid`, `topup.refunded`, and auto top-up's `topup.auto_failed`), put on the
EventBridge bus exactly once per cause, and the user's low-balance threshold.

Handlers never publish events: the billing events function folds the ledger's stream records
(`process_batch`). The face: `process_batch`, `get_alerts`, `set_alerts`, each imported on
first use (PEP 562): a function that reads alerts or sends grant notices does not import the
stream's folding, auto top-up and boto3 at its cold start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from billing.events.alerts import get_alerts, set_alerts
    from billing.events.stream import process_batch

_FACE = {
    "get_alerts": "billing.events.alerts",
    "set_alerts": "billing.events.alerts",
    "process_batch": "billing.events.stream",
}
__all__ = ["get_alerts", "process_batch", "set_alerts"]


def __getattr__(name: str) -> Any:
    module = _FACE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
