"""Error responses, the API Gateway's own included."""

from __future__ import annotations

from pydantic import Field

from billing.api_models._base import _Body
from billing.facts import ErrorCode


class ErrorDetail(_Body):
    code: ErrorCode = Field(description="Stable snake_case error code (API.md).")
    message: str


class Error(_Body):
    """Every error of the API: {"error": {"code", "message"}}."""

    error: ErrorDetail


class GatewayMessage(_Body):
    """API Gateway's own body (the JWT authorizer's 401, an unknown route's 404)."""

    message: str
