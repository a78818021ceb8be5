"""Inclusive ranges of ISO-8601 dates in query strings (`?from=&to=`), in billing time.

Shared by the usage summary and the ledger statement, so both read dates the same way: plain
`YYYY-MM-DD`, UTC days, `from` and `to` inclusive, a default length ending today (billing
time, `billing.clock.now()`), a maximum length.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple

from billing import clock
from billing.errors import InvalidRequest


class DayRange(NamedTuple):
    start: date
    end: date  # inclusive

    def days(self) -> list[str]:
        count = (self.end - self.start).days + 1
        return [(self.start + timedelta(days=n)).isoformat() for n in range(count)]

    def first_moment(self) -> str:
        return clock.iso(datetime.combine(self.start, time(), tzinfo=UTC))

    def after_last_moment(self) -> str:
        """The exclusive end: midnight after the last day."""
        return clock.iso(datetime.combine(self.end + timedelta(days=1), time(), tzinfo=UTC))


# The dates a range may name: billing has no entry before 1970, and the range's arithmetic
# (default length, the moment after the last day, the statement's clock-skew margin) must
# stay inside Python's years 1..9999 instead of failing with a 500.
EARLIEST = date(1970, 1, 1)
LATEST = date(9998, 12, 31)


def parse_date(name: str, text: str) -> date:
    # date.fromisoformat also takes "20261101" and week dates: ask for the plain form only.
    if len(text) != 10 or text[4] != "-" or text[7] != "-" or not text.isascii():
        raise InvalidRequest(f"{name} must be an ISO-8601 date (YYYY-MM-DD).")
    try:
        parsed = date.fromisoformat(text)
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be an ISO-8601 date (YYYY-MM-DD).") from exc
    if not EARLIEST <= parsed <= LATEST:
        raise InvalidRequest(f"{name} must be a date from {EARLIEST} to {LATEST}.")
    return parsed


def day_range(start: str | None, end: str | None, *, default_days: int, max_days: int) -> DayRange:
    """The range `from`..`to` (either may be missing); InvalidRequest when it is bad."""
    first = parse_date("from", start) if start is not None else None
    last = parse_date("to", end) if end is not None else None
    if last is None:
        today = clock.now().date()
        # Only `from`: up to the default length, not past today unless `from` is.
        last = (
            today
            if first is None
            else max(first, min(today, first + timedelta(days=default_days - 1)))
        )
    if first is None:
        first = last - timedelta(days=default_days - 1)
    if first > last:
        raise InvalidRequest("from must not be after to.")
    if (last - first).days + 1 > max_days:
        raise InvalidRequest(f"The range is at most {max_days} days.")
    return DayRange(first, last)
