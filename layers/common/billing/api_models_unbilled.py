"""Usage kept unbilled for an admin."""

from typing import Any, Literal

from pydantic import Field

from billing.api_models import _Body


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
