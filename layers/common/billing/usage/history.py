"""Usage history: the caller's usage records, newest first, optionally filtered.

A user's records are spread over the `usage.user_shards` partitions of the by_user_shard
index (billing.models.UsageByUserShard), each newest first by created_at. A page merges the
shards in one total order, (created_at, request_id) descending (the records of one ledger
transaction share their created_at), so the cursor is one position in that order: the last
record handed out. The next page reads each shard from created_at <= that position on and
skips what is not strictly after it; nothing is skipped or repeated however the records
fall over the shards.

Filters (GET /usage): `from` and `to` (ISO-8601 dates, inclusive, or times) on `created_at`
(a key condition on each shard), `model` and `key_id` (filter conditions: DynamoDB pages on,
so a page still holds `limit` matching records when there are that many).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, timedelta
from typing import Any, NamedTuple, TypeVar

from pynamodb.expressions.condition import Condition

from billing import clock, date_range
from billing.errors import InvalidRequest
from billing.models import UsageRecord, usage_user_shards
from billing.pagination import decode_cursor, encode_cursor
from billing.settings import load_settings

MAX_NAME = 128
MAX_POSITION_PART = 256  # created_at and request_id (<= 128) fit in this

T = TypeVar("T")
# (created_at, request_id): the total order of the listing, newest first.
Position = tuple[str, str]


class UsageFilters(NamedTuple):
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
    """created_at bound of a date (a whole day) or a time, within billing.date_range's
    years, so that a day after it or a microsecond before it (_just_before) stays inside
    Python's calendar."""
    whole_day = len(text) == 10
    try:
        if not whole_day and "T" not in text:
            raise ValueError(text)
        moment = clock.parse_iso(text + "T00:00:00Z" if whole_day else text).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidRequest(f"{name} must be an ISO-8601 date or time.") from exc
    if not date_range.EARLIEST <= moment.date() <= date_range.LATEST:
        raise InvalidRequest(f"{name} must be from {date_range.EARLIEST} to {date_range.LATEST}.")
    return clock.iso(moment + timedelta(days=1) if whole_day and end else moment)


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


# ---------------------------------------------------------------- the merge (pure)


def _ties_ordered(items: Iterable[T], key: Callable[[T], Position]) -> Iterator[T]:
    """A shard's items (created_at descending, in whatever order the index keeps equal
    created_at) in full (created_at, request_id) descending order: each run of equal
    created_at is sorted."""
    run: list[T] = []
    for item in items:
        if run and key(item)[0] != key(run[0])[0]:
            yield from sorted(run, key=key, reverse=True)
            run = []
        run.append(item)
    yield from sorted(run, key=key, reverse=True)


# Shards whose first page is read at once: GET /usage reads every shard before it can answer,
# and 32 queries one after the other cost 32 round trips (~5-10 ms each in AWS).
READ_THREADS = 8


def read_ahead(shards: Sequence[Iterable[T]], first: int) -> list[Iterator[T]]:
    """Each shard as an iterator whose first `first` items were read concurrently with the
    other shards' (the rest is read on demand, as the merge reaches it)."""
    iterators = [iter(shard) for shard in shards]
    if len(iterators) < 2:
        return iterators
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(iterators))) as pool:
        heads = list(pool.map(lambda it: list(itertools.islice(it, first)), iterators))
    return [itertools.chain(head, it) for head, it in zip(heads, iterators, strict=True)]


def merge_newest_first(
    shards: Sequence[Iterable[T]],
    key: Callable[[T], Position],
    limit: int,
    after: Position | None = None,
) -> tuple[list[T], bool]:
    """Up to `limit` items strictly after `after` in (created_at, request_id) descending
    order, from shards each in created_at descending order; and whether more follow."""
    ordered = [
        (item for item in _ties_ordered(shard, key) if after is None or key(item) < after)
        for shard in shards
    ]
    merged = heapq.merge(*ordered, key=key, reverse=True)
    page = list(itertools.islice(merged, limit + 1))  # one more: is there a next page?
    return page[:limit], len(page) > limit


def _position(record: UsageRecord) -> Position:
    return (record.created_at, record.request_id)


def _open_position(cursor: str | None) -> Position | None:
    if cursor is None:
        return None
    value = decode_cursor(cursor)
    if (
        value is None
        or set(value) != {"at", "id"}
        or not all(
            isinstance(value[name], str) and 0 < len(value[name]) <= MAX_POSITION_PART
            for name in ("at", "id")
        )
    ):
        raise InvalidRequest("The cursor is invalid.")
    return (value["at"], value["id"])


# ---------------------------------------------------------------- the listing


def list_usage(
    user_id: str,
    limit: int,
    cursor: str | None,
    filters: UsageFilters | None = None,
    *,
    shards: int | None = None,
) -> dict[str, Any]:
    """A page of the user's usage, newest first, merged over the index shards; `shards`
    defaults to the settings' usage.user_shards."""
    filters = filters or UsageFilters()
    shards = shards if shards is not None else load_settings().usage.user_shards
    after = _open_position(cursor)
    created = UsageRecord.created_at
    # created_at is the index's sort key, so the range is a key condition (never a filter);
    # a cursor lowers its upper end to the position (ties at it are skipped in the merge).
    upper = _just_before(filters.end) if filters.end is not None else None
    if after is not None:
        upper = after[0] if upper is None else min(upper, after[0])
    if filters.start is not None and upper is not None and filters.start > upper:
        return {"items": [], "next_cursor": None}
    range_condition: Condition | None = None
    if filters.start is not None and upper is not None:
        range_condition = created.between(filters.start, upper)
    elif filters.start is not None:
        range_condition = created >= filters.start
    elif upper is not None:
        range_condition = created <= upper
    condition = None
    if filters.model is not None:
        condition = UsageRecord.model == filters.model
    if filters.key_id is not None:
        clause = UsageRecord.key_id == filters.key_id
        condition = clause if condition is None else condition & clause
    # Read lazily, a few records per shard at a time: a page takes about limit / shards from
    # each, and a shard that holds more is read on as the merge reaches it.
    page_size = min(limit + 1, math.ceil((limit + 1) / shards) + 1)
    streams = [
        UsageRecord.by_user_shard.query(
            key,
            range_condition,
            filter_condition=condition,
            scan_index_forward=False,
            page_size=page_size,
        )
        for key in usage_user_shards(user_id, shards)
    ]
    page, more = merge_newest_first(read_ahead(streams, page_size), _position, limit, after)
    next_cursor = None
    if more:
        created_at, request_id = _position(page[-1])
        next_cursor = encode_cursor({"at": created_at, "id": request_id})
    return {"items": [render_usage(record) for record in page], "next_cursor": next_cursor}
