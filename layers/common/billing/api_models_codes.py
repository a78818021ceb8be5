"""Redemption codes: the admin's batches and listings."""

from typing import Any, Literal

from pydantic import Field

from billing.api_models import _Body


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
