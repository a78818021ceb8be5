"""GET /usage/summary: the caller's usage from the rollups, bucketed by day, model or key.

Answered from the rollup items (one per user, day, model and key; billing/usage/rollups.py),
never by reading usage records: a 92-day range is at most a few thousand small items. Days
are UTC days of billing time (`billing.clock.now()`); `from` and `to` are inclusive
ISO-8601 dates, by default the last 30 days up to today.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from billing import date_range
from billing.date_range import DayRange
from billing.errors import InvalidRequest
from billing.models import UsageRollup

MAX_DAYS = 92
DEFAULT_DAYS = 30
_FIELDS = ("quota", "requests", "prompt_tokens", "completion_tokens")


class GroupBy(StrEnum):
    DAY = "day"
    MODEL = "model"
    KEY = "key"


def day_range(start: str | None, end: str | None) -> DayRange:
    return date_range.day_range(start, end, default_days=DEFAULT_DAYS, max_days=MAX_DAYS)


def parse_group_by(text: str | None) -> GroupBy:
    if text is None:
        return GroupBy.DAY
    try:
        return GroupBy(text)
    except ValueError as exc:
        raise InvalidRequest("group_by must be one of day, model, key.") from exc


def _zero() -> dict[str, int]:
    return dict.fromkeys(_FIELDS, 0)


def _add(into: dict[str, int], item: UsageRollup) -> None:
    for name in _FIELDS:
        into[name] += int(getattr(item, name))


def read_rollups(user_id: str, span: DayRange) -> list[UsageRollup]:
    # Sort keys start with the day, so the range is one Query (markers sort after it).
    condition = UsageRollup.bucket.between(
        f"{span.start.isoformat()}#", f"{span.end.isoformat()}#\uffff"
    )
    return list(UsageRollup.query(user_id, condition, consistent_read=True))


def summarize(items: list[UsageRollup], span: DayRange, group_by: GroupBy) -> dict[str, Any]:
    """The buckets and total of the rollup items (pure)."""
    buckets: dict[str | None, dict[str, Any]] = {}
    if group_by is GroupBy.DAY:
        # Every day of the range, empty ones too: a chart has one bar per day.
        for day in span.days():
            buckets[day] = {"key": day, **_zero(), "models": {}}
    total = _zero()
    for item in items:
        _add(total, item)
        key: str | None
        if group_by is GroupBy.DAY:
            key = item.day
        elif group_by is GroupBy.MODEL:
            key = item.model
        else:
            key = item.key_id
        bucket = buckets.setdefault(key, {"key": key, **_zero()})
        _add(bucket, item)
        if group_by is GroupBy.DAY:
            models: dict[str, int] = bucket["models"]
            models[item.model] = models.get(item.model, 0) + int(item.quota)
    ordered = list(buckets.values())
    if group_by is GroupBy.DAY:
        ordered.sort(key=lambda b: str(b["key"]))
    else:
        # Biggest spend first; a stable order for equal ones (no key last).
        ordered.sort(key=lambda b: (-b["quota"], b["key"] is None, str(b["key"] or "")))
    return {
        "from": span.start.isoformat(),
        "to": span.end.isoformat(),
        "group_by": group_by.value,
        "buckets": ordered,
        "total": total,
    }


def usage_summary(user_id: str, query: Mapping[str, str]) -> dict[str, Any]:
    span = day_range(query.get("from"), query.get("to"))
    group_by = parse_group_by(query.get("group_by"))
    return summarize(read_rollups(user_id, span), span, group_by)
