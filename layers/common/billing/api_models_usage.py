"""Usage records and the usage summary."""

from typing import Literal

from pydantic import Field

from billing.api_models import _Body
from billing.facts import USAGE_RECORD_STATUSES


class UsageRecord(_Body):
    request_id: str
    model: str
    group: str | None
    key_id: str | None = Field(description="The API key the gateway served, if it said.")
    prompt_tokens: int
    completion_tokens: int
    quota: int = Field(description="Quota billed (charged or settled).")
    hold_quota: int = Field(description="Quota held while reserved.")
    status: str = Field(json_schema_extra={"enum": [str(s) for s in sorted(USAGE_RECORD_STATUSES)]})
    created_at: str
    updated_at: str | None


class UsagePage(_Body):
    items: list[UsageRecord]
    next_cursor: str | None


class UsageTotals(_Body):
    quota: int
    requests: int
    prompt_tokens: int
    completion_tokens: int


class UsageBucket(UsageTotals):
    key: str | None  # the day, model or key_id (null: usage metered without a key)
    models: dict[str, int] | None = None  # group_by=day: quota per model


class UsageSummary(_Body):
    from_: str = Field(alias="from")
    to: str
    group_by: Literal["day", "model", "key"]
    buckets: list[UsageBucket]
    total: UsageTotals
