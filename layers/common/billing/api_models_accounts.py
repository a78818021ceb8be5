"""The account and its active grants."""

from typing import Literal

from pydantic import Field

from billing.api_models import _Body


class Grant(_Body):
    grant_id: str
    source: Literal["paid", "promo", "code", "referral", "bonus", "adjustment"]
    amount: int
    remaining: int
    priority: int = Field(ge=0, le=100)
    expires_at: str | None
    ref: str
    created_at: str | None


class ExpiringQuota(_Body):
    quota: int = Field(description="What the active grants hold that expires before `before`.")
    before: str


class Account(_Body):
    user_id: str
    quota: int
    used_quota: int
    request_count: int
    held_quota: int = Field(description="Quota held by open reserves (not yet settled).")
    aff_code: str
    aff_quota: int
    aff_history_quota: int
    aff_count: int
    inviter_id: str | None
    status: str = Field(description="`active` (accounts are never closed today).")
    created_at: str
    grants: list[Grant] = Field(description="The active grants, in draw order.")
    expiring_quota: ExpiringQuota
