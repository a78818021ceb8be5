"""Usage history: the caller's usage records, newest first, optionally filtered.

Filters (GET /usage): `from` and `to` (ISO-8601 dates, inclusive, or times) on `created_at`
(a key condition on the by_user index), `model` and `key_id` (filter conditions: DynamoDB
pages on, so a page still holds `limit` matching records when there are that many).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pynamodb.expressions.condition import Condition

from billing import clock
from billing.errors import InvalidRequest
from billing.models import UsageRecord
from billing.pagination import collect_page, decode_cursor, newest_first

MAX_NAME = 128


@dataclass(frozen=True)
class UsageFilters:
    start: str | None = None  # created_at >= start
    end: str | None = None  # created_at < end
    model: str | None = None
    key_id: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.start or self.end or self.model or self.key_id)

    def fingerprint(self) -> str:
        """Part of the cursor's list name: a cursor is valid only for the same filters."""
        if self.empty:
            return ""
        parts = (self.start or "", self.end or "", self.model or "", self.key_id or "")
        return "?" + "\x1f".join(parts)


def _bound(name: str, text: str, *, end: bool) -> str:
    """created_at bound of a date (a whole day) or a time."""
    try:
        if len(text) == 10:
            moment = clock.parse_iso(text + "T00:00:00Z")
            return clock.iso(moment + timedelta(days=1) if end else moment)
        if "T" not in text:
            raise ValueError(text)
        moment = clock.parse_iso(text)
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be an ISO-8601 date or time.") from exc
    return clock.iso(moment)


def _name(name: str, text: str | None) -> str | None:
    if text is None:
        return None
    if not 1 <= len(text) <= MAX_NAME:
        raise InvalidRequest(f"{name} must be 1 to {MAX_NAME} characters.")
    return text


def parse_filters(query: Mapping[str, str]) -> UsageFilters:
    start = _bound("from", query["from"], end=False) if "from" in query else None
    end = _bound("to", query["to"], end=True) if "to" in query else None
    if start is not None and end is not None and start >= end:
        raise InvalidRequest("from must be before to.")
    return UsageFilters(
        start=start,
        end=end,
        model=_name("model", query.get("model")),
        key_id=_name("key_id", query.get("key_id")),
    )


def _just_before(bound: str) -> str:
    # Times are stored to the microsecond, so the last one before an exclusive bound is 1 µs
    # earlier.
    return clock.iso(clock.parse_iso(bound) - timedelta(microseconds=1))


def render_usage(record: UsageRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "model": record.model,
        "group": record.group,
        "key_id": record.key_id,
        "prompt_tokens": int(record.prompt_tokens),
        "completion_tokens": int(record.completion_tokens),
        "quota": int(record.quota),
        "hold_quota": int(record.hold_quota),
        "status": record.status,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def list_usage(
    user_id: str, limit: int, cursor: str | None, filters: UsageFilters | None = None
) -> dict[str, Any]:
    if filters is None or filters.empty:
        return newest_first(
            UsageRecord.by_user.query, "user_id", user_id, limit, cursor, render_usage
        )
    created = UsageRecord.created_at
    range_condition: Condition | None = None
    # created_at is the index's sort key, so the range is a key condition (never a filter).
    last = _just_before(filters.end) if filters.end is not None else None
    if filters.start is not None and last is not None:
        range_condition = created.between(filters.start, last)
    elif filters.start is not None:
        range_condition = created >= filters.start
    elif last is not None:
        range_condition = created <= last
    condition = None
    if filters.model is not None:
        condition = UsageRecord.model == filters.model
    if filters.key_id is not None:
        clause = UsageRecord.key_id == filters.key_id
        condition = clause if condition is None else condition & clause
    results = UsageRecord.by_user.query(
        user_id,
        range_condition,
        filter_condition=condition,
        scan_index_forward=False,
        limit=limit,
        last_evaluated_key=decode_cursor(cursor, owner={"user_id": user_id}),
    )
    return collect_page(results, limit, render_usage)
