"""Admin routes of redemption codes: create a batch, list, disable."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from billing.api_docs import BEARER, DEFAULT_LIMIT, Cursor, Limit, answers, ok
from billing.api_models_codes import Code, CodeBatch, CodePage
from billing.auth import Principal, principal_from_event
from billing.codes import admin as code_admin
from billing.http import RequestBody, model_response, open_page
from pydantic import Field

router = APIGatewayHttpRouter()


class CreateCodes(RequestBody):
    name: str = Field(min_length=1, max_length=100)
    quota: int = Field(gt=0, le=10**15)
    count: int = Field(ge=1, le=code_admin.MAX_BATCH)
    max_uses: int = Field(default=1, ge=1, le=10**9)
    expires_at: str | None = Field(default=None, min_length=1, max_length=64)
    # A promo code: validated by billing.grant_terms.
    grant: dict[str, Any] | None = None


def _admin() -> Principal:
    admin = principal_from_event(router.current_event.raw_event)
    admin.require_admin()
    return admin


# Seconds of the function's Timeout kept for what follows the writes (look-ups, the reply).
_RESERVE_SECONDS = 4.0


@router.post(
    "/admin/redemption-codes",
    security=BEARER,
    responses=answers(ok(201, CodeBatch, "The new codes."), 400, 401, 403, 413),
)
def create_codes(body: CreateCodes) -> Response[str]:
    admin = _admin()
    remaining = router.lambda_context.get_remaining_time_in_millis() / 1000
    batch = code_admin.create_batch(
        admin.user_id,
        body.name,
        body.quota,
        body.count,
        body.max_uses,
        body.expires_at,
        body.grant,
        time_budget=min(code_admin.WRITE_BUDGET_SECONDS, remaining - _RESERVE_SECONDS),
    )
    return model_response(201, CodeBatch, {"batch_id": batch.batch_id, "codes": batch.codes})


@router.get(
    "/admin/redemption-codes",
    security=BEARER,
    responses=answers(ok(200, CodePage, "Codes, newest first."), 400, 401, 403),
)
def list_codes(limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> Response[str]:
    admin = _admin()
    page = open_page("redemption_codes", admin.user_id, limit, cursor)
    listed = code_admin.list_codes(admin.user_id, page.limit, page.cursor)
    return model_response(200, CodePage, page.seal(listed))


@router.delete(
    "/admin/redemption-codes/<code_id>",
    security=BEARER,
    responses=answers(ok(200, Code, "The code, disabled."), 401, 403, 404),
)
def disable_code(code_id: str) -> Response[str]:
    admin = _admin()
    return model_response(200, Code, code_admin.disable(admin.user_id, code_id))
