"""Low-balance alerts and auto top-up."""

from typing import Literal

from pydantic import Field

from billing.api_models import _Body


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
