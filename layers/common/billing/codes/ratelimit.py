"""Failed-attempt limits (redemption codes): per user and per source IP, in the RateLimits table.

Each counted subject has one window item `{key, hits, expires_at}`. A window opens at the
subject's first failure and lasts `redeem_window_seconds`; failures inside it are counted with
an atomic ADD conditioned on the window still being open; a failure after it has closed opens
a new one. `expires_at` is also the table's TTL attribute, so closed windows disappear by
themselves (TTL deletion is lazy, hence every read also checks `expires_at`).

A subject with `redeem_max_failures` failures in its open window is refused with
TooManyAttempts until the window closes. Successes never touch the counters, so a guesser
cannot reset them by redeeming a code of their own in between.

Under concurrency a few attempts that read the window just below the limit may still go
through (each is counted); the limit is about slowing guessers, and 95-bit codes leave
nothing to gain from a handful more guesses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from pynamodb.exceptions import UpdateError

from billing import clock
from billing.errors import TooManyAttempts
from billing.models import RateLimit
from billing.settings import Limits

_CONDITION_FAILED = "ConditionalCheckFailedException"


class Window(NamedTuple):
    """What one subject's window item says at a moment (a missing item is an empty window)."""

    key: str
    hits: int = 0
    expires_at: int = 0

    def is_open(self, now: int) -> bool:
        return self.expires_at > now

    @classmethod
    def of(cls, key: str, item: RateLimit | None) -> Window:
        if item is None:
            return cls(key)
        return cls(key, int(item.hits), int(item.expires_at))


def epoch(moment: float | None = None) -> int:
    return math.floor(clock.now().timestamp() if moment is None else moment)


def redeem_keys(user_id: str, source_ip: str) -> tuple[str, str]:
    """The window keys of one redemption attempt: the user's and the source IP's."""
    return f"redeem#user#{user_id}", f"redeem#ip#{source_ip or 'unknown'}"


def enforce(windows: Iterable[Window], limits: Limits, now: int) -> None:
    """Raise TooManyAttempts (Retry-After: until the latest blocking window closes)."""
    blocked = [
        window.expires_at - now
        for window in windows
        if window.is_open(now) and window.hits >= limits.redeem_max_failures
    ]
    if blocked:
        raise TooManyAttempts(retry_after=max(1, max(blocked)))


def record_failure(windows: Iterable[Window], limits: Limits, now: int) -> None:
    """Count one failed attempt against each subject."""
    for window in windows:
        _count(window, limits.redeem_window_seconds, now)


def _count(window: Window, window_seconds: int, now: int) -> None:
    item = RateLimit(key=window.key)
    add_to_open = window.is_open(now)
    # Two conditional writes race each other at most briefly: each loss flips the path.
    for _ in range(4):
        try:
            if add_to_open:
                item.update(
                    actions=[RateLimit.hits.add(1)],
                    condition=RateLimit.expires_at > now,
                )
            else:
                item.update(
                    actions=[RateLimit.hits.set(1), RateLimit.expires_at.set(now + window_seconds)],
                    condition=RateLimit.key.does_not_exist() | (RateLimit.expires_at <= now),
                )
            return
        except UpdateError as exc:
            if exc.cause_response_code != _CONDITION_FAILED:
                raise
            add_to_open = not add_to_open


def windows_by_key(items: Mapping[str, RateLimit], keys: Iterable[str]) -> list[Window]:
    return [Window.of(key, items.get(key)) for key in keys]
