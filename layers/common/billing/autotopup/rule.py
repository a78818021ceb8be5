"""The auto top-up rule of a user, with its pending marker, day count and failure outbox.

One item per user in the auto top-up table. The rule's owner (PUT /account/auto-topup) sets
the rule; the billing events function moves the marker, the day count and the failures, each
write conditional on `version`, so a concurrent change is re-read, never overwritten.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pynamodb.attributes import BooleanAttribute, NumberAttribute, UnicodeAttribute
from pynamodb.exceptions import DoesNotExist
from pynamodb.models import Model

_REGION = os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))

DEFAULT_MAX_PER_DAY = 3
FAILURES_TO_DISABLE = 3  # failures in a row that switch the rule off


class AutoTopupRule(Model):
    class Meta:
        table_name = os.environ.get("AUTO_TOPUP_TABLE", "")
        region = _REGION

    user_id = UnicodeAttribute(hash_key=True)
    enabled = BooleanAttribute(default=False)
    threshold = NumberAttribute(default=0)
    amount = NumberAttribute(default=0)
    method = UnicodeAttribute(default="stripe")
    max_per_day = NumberAttribute(default=DEFAULT_MAX_PER_DAY)
    failures = NumberAttribute(default=0)  # in a row; a success resets it
    disabled_reason = UnicodeAttribute(null=True)  # "failures" when switched off by them
    last_failure = UnicodeAttribute(null=True)  # JSON {"order_id", "code", "message", "at"}
    last_success = UnicodeAttribute(null=True)  # JSON {"order_id", "at"}
    # The pending marker: at most one off-session payment at a time.
    pending_order_id = UnicodeAttribute(null=True)
    pending_cause = UnicodeAttribute(null=True)  # the ledger entry that triggered it
    pending_since = UnicodeAttribute(null=True)
    pending_charged = BooleanAttribute(null=True)  # the provider has been asked
    last_seq = UnicodeAttribute(default="")  # newest ledger entry that triggered a payment
    day = UnicodeAttribute(null=True)  # billing day (UTC) of day_count
    day_count = NumberAttribute(default=0)
    outbox = UnicodeAttribute(null=True)  # JSON list of events not yet confirmed on the bus
    version = NumberAttribute(default=0)
    updated_at = UnicodeAttribute(null=True)


def read(user_id: str) -> AutoTopupRule | None:
    try:
        return AutoTopupRule.get(user_id, consistent_read=True)
    except DoesNotExist:
        return None


def loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def outbox_of(rule: AutoTopupRule) -> list[dict[str, Any]]:
    loaded = loads(rule.outbox)
    return loaded if isinstance(loaded, list) else []


def state_of(rule: AutoTopupRule | None) -> str:
    if rule is None or not rule.enabled:
        return "disabled_after_failures" if rule is not None and rule.disabled_reason else "off"
    return "pending" if rule.pending_order_id else "active"
