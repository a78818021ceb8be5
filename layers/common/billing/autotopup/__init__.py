"""Auto top-up: a saved Stripe card charged off-session when a debit takes the balance under
the user's threshold, guarded by a conditional pending marker (never two at once, at most
`max_per_day` a billing day), credited by the normal webhook pipeline (`auto: true`).

The face: `get_rule`, `put_rule`, `NoSavedCard` (routes); `Move`, `on_entries`,
`events_published` (the billing events function, which sees the ledger's stream). Each is
imported on first use (PEP 562): the routes do not import the trigger's payment path.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from billing.autotopup.settings import NoSavedCard, get_rule, put_rule
    from billing.autotopup.trigger import Move, events_published, on_entries

_FACE = {
    "NoSavedCard": "billing.autotopup.settings",
    "get_rule": "billing.autotopup.settings",
    "put_rule": "billing.autotopup.settings",
    "Move": "billing.autotopup.trigger",
    "events_published": "billing.autotopup.trigger",
    "on_entries": "billing.autotopup.trigger",
}
__all__ = ["Move", "NoSavedCard", "events_published", "get_rule", "on_entries", "put_rule"]


def __getattr__(name: str) -> Any:
    module = _FACE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
