"""The API's response bodies: one pydantic model per resource, strict (a field the handlers
render but a model lacks fails validation, so the OpenAPI document cannot hide it).

Each route names its models in `responses=` (billing.api_docs) and renders its bodies
through them (billing.http.model_response), so the document's schemas are these;
tests/integration/test_openapi_responses.py validates what the handlers render, through the
local stack, against that document.

This module holds the base and the errors; each area has a module of its own
(billing.api_models_<area>: accounts, ledger, usage, unbilled, limits, orders, topups,
webhooks, codes, redemption, referral, alerts), cut along the functions' routes, so that a
function defines only the models it answers with (each class costs ~0.2 ms of every cold
start): the admin function, for one, needs an account and an order, not the ledger's pages,
the usage summary or the top-up options.
"""

from pydantic import BaseModel, ConfigDict, Field

from billing import restore
from billing.facts import ErrorCode


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


@restore.before_snapshot
def _build_models() -> None:
    # With SnapStart the snapshot holds these built (defer_build leaves them to first use).
    restore.build_models(_Body)
