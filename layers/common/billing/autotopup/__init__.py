"""Auto top-up: a saved Stripe card charged off-session when a debit takes the balance under
the user's threshold, guarded by a conditional pending marker (never two at once, at most
`max_per_day` a billing day), credited by the normal webhook pipeline (`auto: true`).

The face: `get_rule`, `put_rule`, `NoSavedCard` (routes); `Move`, `on_entries`,
`events_published` (the billing events function, which sees the ledger's stream).
"""

from billing.autotopup.settings import NoSavedCard, get_rule, put_rule
from billing.autotopup.trigger import Move, events_published, on_entries

__all__ = ["Move", "NoSavedCard", "events_published", "get_rule", "on_entries", "put_rule"]
