"""The pure spend-limit module: UTC windows, scopes and limits, and the chunk's counter
conditions (billing.usage.limits)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from billing.errors import InvalidRequest
from billing.usage import limits

WED = datetime(2026, 12, 2, 23, 59, 59, 999999, tzinfo=UTC)  # a Wednesday


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("period", "name", "start", "end"),
    [
        ("day", "day:2026-12-02", utc(2026, 12, 2), utc(2026, 12, 3)),
        ("week", "week:2026-11-30", utc(2026, 11, 30), utc(2026, 12, 7)),
        ("month", "month:2026-12", utc(2026, 12, 1), utc(2027, 1, 1)),
        ("total", "total", None, None),
    ],
)  # fmt: skip
def test_windows_start_at_utc_midnight_monday_and_the_first(
    period: str, name: str, start: datetime | None, end: datetime | None
) -> None:
    assert limits.window_name(period, WED) == name
    assert limits.window_start(period, WED) == start
    assert limits.window_end(period, WED) == end


def test_the_next_instant_after_a_window_is_in_the_next_one() -> None:
    after = WED + timedelta(microseconds=1)  # Thursday 00:00
    assert limits.window_name("day", after) == "day:2026-12-03"
    assert limits.window_name("week", utc(2026, 12, 7)) == "week:2026-12-07"
    assert limits.window_name("month", utc(2027, 1, 1)) == "month:2027-01"
    assert limits.window_end("month", utc(2027, 2, 10)) == datetime(2027, 3, 1, tzinfo=UTC)


def test_windows_are_utc_whatever_the_moments_zone() -> None:
    # 01:00 on the 3rd in UTC+2 is 23:00 on the 2nd in UTC.
    local = datetime(2026, 12, 3, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert limits.window_name("day", local) == "day:2026-12-02"


def test_counter_keys_join_scope_and_window_and_expire_after_the_window() -> None:
    key = limits.counter_key("key:k-1", "day", WED)
    assert key == "key:k-1#day:2026-12-02"
    assert limits.scope_of(key) == "key:k-1"
    expiry = limits.counter_expiry(key)
    assert expiry == int((utc(2026, 12, 3) + limits.COUNTER_GRACE).timestamp())
    month = limits.counter_expiry("account#month:2026-12")
    assert month == int((utc(2027, 1, 1) + limits.COUNTER_GRACE).timestamp())
    assert limits.counter_expiry("account#total") is None


@pytest.mark.parametrize("scope", ["account", "key:a", "key:sk-ABC_123.x:y", "key:" + "k" * 128])
def test_valid_scopes(scope: str) -> None:
    assert limits.parse_scope(scope) == scope


@pytest.mark.parametrize(
    "scope",
    ["", "Account", "accounts", "key:", "key", "key:a b", "key:a#b", "key:" + "k" * 129,
     "user:x", "key:\u00e9", "key:a\n", "key:a/b", "key:a%2Fb"],
)  # fmt: skip
def test_bad_scopes_are_refused(scope: str) -> None:
    with pytest.raises(InvalidRequest):
        limits.parse_scope(scope)


@pytest.mark.parametrize(
    ("max_quota", "period"),
    [(-1, "day"), (1.5, "day"), ("10", "day"), (True, "day"), (10**18 + 1, "day"),
     (10, "year"), (10, "Day"), (10, None), (10, "")],
)  # fmt: skip
def test_bad_amounts_and_periods_are_refused(max_quota: object, period: object) -> None:
    with pytest.raises(InvalidRequest):
        limits.parse_limit("account", max_quota, period)


def test_a_valid_limit() -> None:
    assert limits.parse_limit("key:k", 0, "total") == limits.Limit("key:k", 0, "total")


def test_limits_in_force_are_the_accounts_and_the_keys() -> None:
    defined = {
        "account": limits.Limit("account", 500, "month"),
        "key:a": limits.Limit("key:a", 30, "day"),
        "key:b": limits.Limit("key:b", 10, "week"),
    }
    assert limits.limits_in_force(defined, "a", WED) == {
        "account#month:2026-12": defined["account"],
        "key:a#day:2026-12-02": defined["key:a"],
    }
    assert limits.limits_in_force(defined, None, WED) == {
        "account#month:2026-12": defined["account"]
    }
    assert limits.limits_in_force({"key:a": defined["key:a"]}, "c", WED) == {}


def test_stored_limits_read_back() -> None:
    stored = {"key:a": {"max_quota": 30, "period": "day", "updated_at": "x"}}
    assert limits.stored_limits(stored) == {"key:a": limits.Limit("key:a", 30, "day")}
    assert limits.stored_limits(None) == {}


def test_the_bound_is_the_max_less_the_highest_running_total_after_a_charge() -> None:
    moves = limits.CounterMoves()
    moves.add("k", 10, limit=30)  # charge 10: running 10
    moves.add("k", -10)  # a release gives 10 back: running 0
    moves.add("k", 5)  # a settle above its hold: running 5, no condition of its own
    moves.add("k", 8, limit=30)  # charge 8: running 13
    move = moves.moves["k"]
    assert move.total == 13
    # Each charge fits when it comes: spent + 10 <= 30 and spent + 13 <= 30.
    assert move.bound == 17
    assert move.fits_from_nothing()


def test_settles_and_releases_alone_carry_no_condition() -> None:
    moves = limits.CounterMoves()
    moves.add("k", 50)
    moves.add("k", -3)
    assert moves.moves["k"].bound is None and moves.moves["k"].total == 47
    moves.add("zero", 0)  # nothing to move: no counter item
    assert len(moves) == 1


def test_a_chunk_too_big_for_an_empty_window_has_a_negative_bound() -> None:
    moves = limits.CounterMoves()
    moves.add("k", 20, limit=30)
    moves.add("k", 20, limit=30)
    assert moves.moves["k"].bound == -10
    assert not moves.moves["k"].fits_from_nothing()
    assert moves.impossible() == "k"
    assert moves.keys_after(["k", "j"]) == 2


def test_rendered_limit_shows_spend_and_window() -> None:
    shown = limits.render_limit(limits.Limit("key:a", 30, "day"), 12, WED)
    assert shown == {
        "scope": "key:a",
        "max_quota": 30,
        "period": "day",
        "spent": 12,
        "remaining": 18,
        "window": "day:2026-12-02",
        "window_start": "2026-12-02T00:00:00Z",
        "window_end": "2026-12-03T00:00:00Z",
    }
    over = limits.render_limit(limits.Limit("account", 10, "total"), 15, WED)
    assert over["remaining"] == 0 and over["window_start"] is None
