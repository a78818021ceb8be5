"""The billing clock of the stack: real time plus an offset that only moves forward.

POST /_local/clock {"advance_seconds"} moves it for every function: each invocation carries
the offset and the worker sets BILLING_CLOCK_OFFSET_SECONDS (read by billing.clock) before the
handler runs; then every schedule that came due in billing time runs once. Tokens, webhook
signatures and the stack's own timers keep real time.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

OFFSET_VARIABLE = "BILLING_CLOCK_OFFSET_SECONDS"
# A year at a time is plenty for any test and keeps a typo from flinging the clock away.
MAX_ADVANCE_SECONDS = 366 * 86400


class ClockError(ValueError):
    pass


class BillingClock:
    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    @property
    def offset(self) -> float:
        with self._lock:
            return self._offset

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def timestamp(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: object) -> float:
        """Move forward by a whole number of seconds (never back); returns the new offset."""
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            raise ClockError("advance_seconds must be a whole number of seconds")
        if not 0 < seconds <= MAX_ADVANCE_SECONDS:
            raise ClockError(
                f"advance_seconds must be 1..{MAX_ADVANCE_SECONDS}: the clock never goes back"
            )
        with self._lock:
            self._offset += seconds
            return self._offset

    def describe(self) -> dict[str, object]:
        moment = self.now()
        return {
            "now": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "offset_seconds": self.offset,
        }
