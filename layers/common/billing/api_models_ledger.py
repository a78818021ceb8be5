"""The ledger and the grants' history."""

from typing import Literal

from pydantic import Field

from billing.api_models import _Body
from billing.api_models_accounts import Grant
from billing.facts import EntryKind


class GrantHistory(Grant):
    status: Literal["active", "exhausted", "expired", "merged"]
    merged_into: str | None = None


class GrantPage(_Body):
    items: list[GrantHistory]
    next_cursor: str | None


class LedgerEntry(_Body):
    id: str
    kind: EntryKind
    balance: Literal["quota", "aff_quota"]
    delta: int
    balance_after: int
    ref: str
    created_at: str
    grants: dict[str, int] = Field(description="Per-grant deltas (quota), summing to delta.")


class LedgerPage(_Body):
    items: list[LedgerEntry]
    next_cursor: str | None
