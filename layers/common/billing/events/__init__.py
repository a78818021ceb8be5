"""Billing events: what the ledger's stream causes (`balance.low`, `balance.depleted`,
`topup.paid`, `topup.refunded`, and auto top-up's `topup.auto_failed`), put on the
EventBridge bus exactly once per cause, and the user's low-balance threshold.

Handlers never publish events: the billing events function folds the ledger's stream records
(`process_batch`). The face: `process_batch`, `get_alerts`, `set_alerts`.
"""

from billing.events.alerts import get_alerts, set_alerts
from billing.events.stream import process_batch

__all__ = ["get_alerts", "process_batch", "set_alerts"]
