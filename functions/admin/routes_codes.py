"""Admin routes of redemption codes: create a batch, list, disable."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from billing.auth import Principal, principal_from_event
from billing.codes import admin as code_admin
from billing.http import RequestBody, json_response, page_params
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


@router.post("/admin/redemption-codes")
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
    return json_response(201, {"batch_id": batch.batch_id, "codes": batch.codes})


@router.get("/admin/redemption-codes")
def list_codes() -> Response[str]:
    admin = _admin()
    page = page_params(router, "redemption_codes", admin.user_id)
    return json_response(
        200, page.seal(code_admin.list_codes(admin.user_id, page.limit, page.cursor))
    )


@router.delete("/admin/redemption-codes/<code_id>")
def disable_code(code_id: str) -> Response[str]:
    admin = _admin()
    return json_response(200, code_admin.disable(admin.user_id, code_id))
