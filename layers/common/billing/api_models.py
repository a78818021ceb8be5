"""The API's response bodies: one pydantic model per resource, strict (a field the handlers
render but a model lacks fails validation, so the OpenAPI document cannot hide it).

Each route names its models in `responses=` (billing.api_docs) and renders its bodies
through them (billing.http.model_response), so the document's schemas are these;
tests/integration/test_openapi_responses.py validates what the handlers render, through the
local stack, against that document.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from billing import restore
from billing.facts import USAGE_RECORD_STATUSES, EntryKind, ErrorCode, OrderStatus


class _Body(BaseModel):
    # API.md lets responses carry more fields than it names, but each must be declared here.
    # defer_build: a function answers a few of these models; each is built on first use
    # (validating a request, serialising a response) instead of all at every cold start.
    model_config = ConfigDict(extra="forbid", defer_build=True)


class ErrorDetail(_Body):
    code: ErrorCode = Field(description="Stable snake_case error code (API.md).")
    message: str


class Error(_Body):
    """Every error of the API: {"error": {"code", "message"}}."""

    error: ErrorDetail


class GatewayMessage(_Body):
    """API Gateway's own body (the JWT authorizer's 401, an unknown route's 404)."""

    message: str


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


class UnbilledUsage(_Body):
    """Usage that happened but could not be billed (unknown model, no account)."""

    request_id: str
    user_id: str
    action: Literal["settle", "charge"]
    model: str
    group: str | None
    key_id: str | None = Field(description="The API key the gateway served, if it said.")
    prompt_tokens: int
    completion_tokens: int
    error: Literal["unknown_model", "account_not_found"]
    message: str | None = Field(description="Why it could not be billed.")
    status: Literal["unbilled", "remetered"]
    attempts: int
    last_error: str | None
    result: dict[str, Any] | None = Field(description="The metering result that billed it.")
    remetered_by: str | None
    remetered_at: str | None
    created_at: str
    updated_at: str


class UnbilledUsagePage(_Body):
    items: list[UnbilledUsage]
    next_cursor: str | None


class Product(_Body):
    product_id: str
    name: str
    price: str
    currency: str
    quota: int


class Method(_Body):
    id: Literal["stripe", "epay", "creem", "waffo"]
    name: str
    currency: str
    unit_price: str
    channels: list[str] | None = None
    products: list[Product] | None = None


class TopupOptions(_Body):
    quota_per_unit: int
    amount_options: list[int]
    min_topup: int
    max_topup: int
    discounts: dict[str, str]
    methods: list[Method]
    referral_rebate_percent: str
    referral_min_transfer: int = Field(description="The least quota /referral/transfer moves.")


class Order(_Body):
    order_id: str
    method: str
    amount: int
    pay_money: str = Field(description="Decimal string in the currency's minor unit.")
    currency: str
    quota: int
    status: OrderStatus
    refunded_money: str = Field(description="Decimal string: what refunds returned so far.")
    pay_url: str | None = None
    channel: str | None = None
    product_id: str | None = None
    created_at: str
    paid_at: str | None
    expires_at: str | None = Field(default=None, description="A pending order's deadline.")
    failure_reason: str | None = Field(
        default=None, description="Why it failed, expired or is disputed (ttl, mismatch:...)."
    )
    auto: bool | None = Field(default=None, description="true: an auto top-up (off-session).")
    save_card: bool | None = Field(default=None, description="true: the card is kept.")


class OrderPage(_Body):
    items: list[Order]
    next_cursor: str | None


class Redeemed(_Body):
    quota_added: int
    quota: int


class Transferred(_Body):
    aff_quota: int
    quota: int


class CodeBatch(_Body):
    batch_id: str
    codes: list[str] = Field(description="Plaintext codes, returned once (never stored).")


class Code(_Body):
    code_id: str
    name: str
    quota: int
    uses: int
    max_uses: int
    status: Literal["active", "disabled"]
    expires_at: str | None
    batch_id: str
    created_by: str
    created_at: str
    disabled_at: str | None
    grant: dict[str, Any] | None = Field(description="A promo code's grant terms.")


class CodePage(_Body):
    items: list[Code]
    next_cursor: str | None


class Alerts(_Body):
    low_balance_threshold: int | None
    quota: int
    below_threshold: bool


class SavedCard(_Body):
    brand: str | None
    last4: str | None


class AutoTopupFailure(_Body):
    order_id: str
    code: str = Field(description="card_declined, requires_action, no_saved_card, ...")
    message: str
    at: str


class AutoTopupSuccess(_Body):
    order_id: str
    at: str


class AutoTopupRule(_Body):
    enabled: bool
    state: Literal["off", "active", "pending", "disabled_after_failures"]
    saved_card: SavedCard | None
    threshold: int | None = None
    amount: int | None = None
    method: Literal["stripe"] | None = None
    max_per_day: int | None = None
    failures: int | None = Field(default=None, description="Failures in a row (3 disable).")
    last_failure: AutoTopupFailure | None = None
    last_success: AutoTopupSuccess | None = None
    pending_order_id: str | None = None
    today_count: int | None = None


class WebhookAck(_Body):
    """The provider's acknowledgement: Stripe and Creem get {"received": true}, Waffo its
    signed {"message": "success"}."""

    received: bool | None = None
    message: str | None = None


@restore.before_snapshot
def _build_models() -> None:
    # With SnapStart the snapshot holds these built (defer_build leaves them to first use).
    restore.build_models(_Body)
