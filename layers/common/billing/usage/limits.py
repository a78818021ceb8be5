"""Spend limits: pure window arithmetic, scope and limit validation, and the counter updates
a chunk of usage adds to its ledger transaction.

A limit caps the spend of a scope (`account`, or `key:<key_id>` for one API key) per window
of its period (UTC: a day from 00:00, a week from Monday 00:00, a month from the 1st, or
`total`). The spend of a window lives in a counter item (user, `<scope>#<window>`); a charge
or reserve adds its price under a condition that the window stays within `max_quota`, in the
same transaction as the balance change, so the check and the debit cannot drift apart under
any concurrency. A release gives back the hold it counted; a settle moves the counter by the
difference from its hold with no condition (the usage happened). A limit counts what is
charged while it is in force (a new limit starts at the window's counter as it stands).

Within one transaction the events touching a counter are in request order; the condition is
on the counter before the transaction: `spent <= max_quota - p`, where p is the largest
running total of the chunk's amounts after any conditional (charge, reserve) amount, which is
exactly "each charge and reserve fits when it comes".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple, get_args

from billing.errors import InvalidRequest

Period = Literal["day", "week", "month", "total"]
PERIODS: tuple[str, ...] = get_args(Period)
ACCOUNT_SCOPE = "account"
KEY_PREFIX = "key:"
# Key ids (1 to 128 characters) of letters, digits and . _ : @ + = ~ - : safe in a URL path and
# free of '#' (the counter's sort key joins scope and window with it).
KEY_ID = re.compile(r"[A-Za-z0-9._:@+=~-]{1,128}")
MAX_QUOTA = 10**18
MAX_LIMITS = 50  # per account: the definitions live on the account item
# Counter items outlive their window (late settles and releases still find them).
COUNTER_GRACE = timedelta(days=35)


class Limit(NamedTuple):
    scope: str
    max_quota: int
    period: Period


def key_scope(key_id: str) -> str:
    return KEY_PREFIX + key_id


def is_valid_key_id(key_id: str) -> bool:
    return KEY_ID.fullmatch(key_id) is not None


def parse_scope(text: str) -> str:
    """A valid scope as given, or InvalidRequest."""
    if text == ACCOUNT_SCOPE:
        return text
    if text.startswith(KEY_PREFIX) and is_valid_key_id(text[len(KEY_PREFIX) :]):
        return text
    raise InvalidRequest(
        "scope must be 'account' or 'key:<key_id>' (1 to 128 letters, digits or . _ : @ + = ~ -)."
    )


def parse_limit(scope: str, max_quota: Any, period: Any) -> Limit:
    """A validated limit, or InvalidRequest (bad scope, period or amount)."""
    scope = parse_scope(scope)
    if (
        not isinstance(max_quota, int)
        or isinstance(max_quota, bool)
        or not 0 <= max_quota <= MAX_QUOTA
    ):
        raise InvalidRequest(f"max_quota must be an integer from 0 to {MAX_QUOTA}.")
    if period not in PERIODS:
        raise InvalidRequest("period must be one of: " + ", ".join(PERIODS) + ".")
    return Limit(scope=scope, max_quota=max_quota, period=period)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def window_start(period: str, moment: datetime) -> datetime | None:
    """Start of the window holding `moment` (None for `total`)."""
    day = _utc(moment).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    if period == "total":
        return None
    raise ValueError(period)


def window_end(period: str, moment: datetime) -> datetime | None:
    """End (exclusive) of the window holding `moment` (None for `total`)."""
    start = window_start(period, moment)
    if start is None:
        return None
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    return (start + timedelta(days=32)).replace(day=1)


def window_name(period: str, moment: datetime) -> str:
    """`day:2026-12-01`, `week:2026-11-30` (its Monday), `month:2026-12` or `total`."""
    start = window_start(period, moment)
    if start is None:
        return "total"
    if period == "month":
        return f"month:{start:%Y-%m}"
    return f"{period}:{start:%Y-%m-%d}"


def counter_key(scope: str, period: str, moment: datetime) -> str:
    """A window's counter name: `<scope>#<window>` (its item: billing.models.limit_window_key)."""
    return f"{scope}#{window_name(period, moment)}"


def counter_expiry(key: str) -> int | None:
    """Epoch seconds after which the counter of `key` may go (TTL); None for `total`."""
    window = key.rsplit("#", 1)[1]
    if window == "total":
        return None
    period, start_text = window.split(":", 1)
    start = datetime.strptime(
        start_text + ("-01" if period == "month" else ""), "%Y-%m-%d"
    ).replace(tzinfo=UTC)
    end = window_end(period, start)
    assert end is not None
    return int((end + COUNTER_GRACE).timestamp())


def limits_in_force(
    limits: Mapping[str, Limit], key_id: str | None, moment: datetime
) -> dict[str, Limit]:
    """Counter key → limit, for an event of `key_id` at `moment` (account limit, key limit)."""
    scopes = [ACCOUNT_SCOPE] + ([key_scope(key_id)] if key_id else [])
    found: dict[str, Limit] = {}
    for scope in scopes:
        limit = limits.get(scope)
        if limit is not None:
            found[counter_key(scope, limit.period, moment)] = limit
    return found


class CounterMove:
    """What one chunk does to one counter: its amounts in request order."""

    __slots__ = ("key", "max_quota", "peak", "total")

    def __init__(self, key: str) -> None:
        self.key = key
        self.max_quota: int | None = None  # of the limit whose conditional amounts it carries
        self.total = 0
        self.peak: int | None = None  # largest running total right after a conditional amount

    def add(self, amount: int, *, limit: int | None = None) -> None:
        """Add an amount; with `limit`, one that must fit (a charge or a reserve)."""
        self.total += amount
        if limit is not None:
            self.max_quota = limit if self.max_quota is None else min(self.max_quota, limit)
            self.peak = self.total if self.peak is None else max(self.peak, self.total)

    @property
    def bound(self) -> int | None:
        """The counter before the chunk must be at most this (None: no condition)."""
        if self.peak is None or self.max_quota is None:
            return None
        return self.max_quota - self.peak

    def fits_from_nothing(self) -> bool:
        bound = self.bound
        return bound is None or bound >= 0


class CounterMoves:
    """The counter moves of one chunk, by counter key."""

    __slots__ = ("moves",)

    def __init__(self) -> None:
        self.moves: dict[str, CounterMove] = {}

    def add(self, key: str, amount: int, *, limit: int | None = None) -> None:
        if amount == 0 and limit is None:
            return
        self.moves.setdefault(key, CounterMove(key)).add(amount, limit=limit)

    def __len__(self) -> int:
        return len(self.moves)

    def keys_after(self, keys: Iterable[str]) -> int:
        """How many counters the chunk would touch with `keys` added."""
        return len(self.moves.keys() | set(keys))

    def impossible(self) -> str | None:
        """A counter key whose conditional amounts cannot fit even in an empty window."""
        for key, move in self.moves.items():
            if not move.fits_from_nothing():
                return key
        return None


def scope_of(key: str) -> str:
    """The scope of a counter key."""
    return key.rsplit("#", 1)[0]


def render_limit(limit: Limit, spent: int, moment: datetime) -> dict[str, Any]:
    start = window_start(limit.period, moment)
    end = window_end(limit.period, moment)
    return {
        "scope": limit.scope,
        "max_quota": limit.max_quota,
        "period": limit.period,
        "spent": spent,
        "remaining": max(0, limit.max_quota - spent),
        "window": window_name(limit.period, moment),
        "window_start": None if start is None else start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "window_end": None if end is None else end.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def stored_limits(raw: Any) -> dict[str, Limit]:
    """The limits stored on an account item (its `limits` map), by scope."""
    if raw is None:
        return {}
    values = raw.as_dict() if hasattr(raw, "as_dict") else dict(raw)
    found: dict[str, Limit] = {}
    for scope, item in values.items():
        item = item.as_dict() if hasattr(item, "as_dict") else dict(item)
        found[str(scope)] = Limit(
            scope=str(scope), max_quota=int(item["max_quota"]), period=item["period"]
        )
    return found
