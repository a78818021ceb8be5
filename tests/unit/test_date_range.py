"""billing.date_range: the `?from=&to=` of GET /usage/summary and GET /ledger/export. Dates
outside 1970..9998 are a 400, never a 500 from date arithmetic at the ends of Python's
calendar (the fuzzer found `to=0311-09-21`)."""

from __future__ import annotations

from datetime import date

import pytest
from billing.date_range import day_range
from billing.errors import InvalidRequest
from billing.usage.history import parse_filters


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (None, "0311-09-21"),
        (None, "0001-01-01"),
        ("0001-01-01", None),
        ("9999-12-31", None),
        (None, "9999-12-31"),
        ("1969-12-31", "1970-01-02"),
        ("2026-11-01", "2026-13-01"),
        ("20261101", None),
        ("2026-11-05", "2026-11-01"),
        ("2026-01-01", "2026-12-31"),
    ],
)
def test_bad_ranges_are_invalid_requests(start: str | None, end: str | None) -> None:
    with pytest.raises(InvalidRequest):
        day_range(start, end, default_days=30, max_days=92)


def test_ranges_at_the_bounds_are_computed() -> None:
    early = day_range(None, "1970-01-05", default_days=30, max_days=92)
    assert early.end == date(1970, 1, 5) and early.start == date(1969, 12, 7)
    assert early.first_moment() == "1969-12-07T00:00:00.000000Z"
    late = day_range("9998-12-31", None, default_days=30, max_days=92)
    assert late.start == late.end == date(9998, 12, 31)
    assert late.after_last_moment() == "9999-01-01T00:00:00.000000Z"


@pytest.mark.parametrize(
    "query",
    [
        {"to": "9999-12-31"},
        {"to": "0001-01-01T00:00:00Z"},
        {"from": "0001-01-01T00:00:00+05:00"},
        {"from": "1969-12-31"},
        {"from": "2026-11-01T25:00:00Z"},
        {"from": "20261101"},
        {"from": "2026-11-02", "to": "2026-11-01"},
    ],
)
def test_bad_usage_filters_are_invalid_requests(query: dict[str, str]) -> None:
    with pytest.raises(InvalidRequest):
        parse_filters(query)


def test_usage_filters_take_whole_days_and_times_as_utc() -> None:
    filters = parse_filters({"from": "2026-11-01T10:00:00+02:00", "to": "9998-12-31"})
    assert filters.start == "2026-11-01T08:00:00.000000Z"
    assert filters.end == "9999-01-01T00:00:00.000000Z"
