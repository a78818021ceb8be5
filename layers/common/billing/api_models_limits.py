"""Spend limits."""

from typing import Literal

from pydantic import Field

from billing.api_models import _Body


class SpendLimit(_Body):
    """A spend limit with the spend of its current window (UTC)."""

    scope: str = Field(description="`account` or `key:<key_id>`.")
    max_quota: int
    period: Literal["day", "week", "month", "total"]
    spent: int
    remaining: int
    window: str
    window_start: str | None
    window_end: str | None


class SpendLimits(_Body):
    limits: list[SpendLimit]


class LimitDeleted(_Body):
    scope: str
    deleted: bool
