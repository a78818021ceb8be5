"""Billing time in one format: ISO-8601 UTC with microseconds, which sorts as it reads.

Every billing rule that depends on time (grant expiry, order and hold lifetimes, limit
windows, rate-limit windows, day counts) reads `now()`. In AWS it is the system clock. The
local stack can move it forward for every function (POST /_local/clock): it sets
BILLING_CLOCK_OFFSET_SECONDS in the worker before each invocation. Nothing in AWS sets it.
Times other parties check (tokens, webhook signatures, requests to providers) use `real_now()`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

OFFSET_VARIABLE = "BILLING_CLOCK_OFFSET_SECONDS"


def real_now() -> datetime:
    return datetime.now(UTC)


def offset_seconds() -> float:
    raw = os.environ.get(OFFSET_VARIABLE, "")
    return float(raw) if raw else 0.0


def now() -> datetime:
    offset = offset_seconds()
    moment = real_now()
    return moment + timedelta(seconds=offset) if offset else moment


def iso(moment: datetime | None = None) -> str:
    # isoformat, not strftime: strftime's %Y does not pad years before 1000 ("311-09-21").
    return (moment or now()).astimezone(UTC).replace(tzinfo=None).isoformat(
        "T", "microseconds"
    ) + "Z"


def parse_iso(text: str) -> datetime:
    """Parse an ISO-8601 time; a naive time is taken as UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
