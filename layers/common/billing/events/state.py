"""The per-user alert item: the low-balance threshold, the arming of each alert, and the
outbox of events decided but not yet confirmed on the bus.

One item per user in the alerts table. Only the billing events function writes the arming,
`last_seq` and the outbox (under `version`); the alerts route writes the threshold (and re-arms).
"""

from __future__ import annotations

import json
import os
from typing import Any

from pynamodb.attributes import BooleanAttribute, NumberAttribute, UnicodeAttribute
from pynamodb.exceptions import DoesNotExist
from pynamodb.models import Model

_REGION = os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


class AlertState(Model):
    class Meta:
        table_name = os.environ.get("ALERTS_TABLE", "")
        region = _REGION

    user_id = UnicodeAttribute(hash_key=True)
    low_balance_threshold = NumberAttribute(null=True)
    low_armed = BooleanAttribute(default=True)
    depleted_armed = BooleanAttribute(default=True)
    # seq (billing.ledger) of the newest ledger entry whose effects are recorded here
    last_seq = UnicodeAttribute(default="")
    # JSON list of events written here before they were put on the bus (the outbox)
    outbox = UnicodeAttribute(null=True)
    version = NumberAttribute(default=0)
    updated_at = UnicodeAttribute(null=True)


def read(user_id: str) -> AlertState:
    """The user's alert item (a fresh, unsaved one when there is none)."""
    try:
        return AlertState.get(user_id, consistent_read=True)
    except DoesNotExist:
        return AlertState(user_id=user_id, version=0)


def outbox_of(state: AlertState) -> list[dict[str, Any]]:
    if not state.outbox:
        return []
    loaded = json.loads(state.outbox)
    return loaded if isinstance(loaded, list) else []
