"""POST /admin/accounts/{user_id}/adjust: a signed change of a balance with a reason."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from billing import accounts
from billing.auth import principal_from_event
from billing.errors import InvalidRequest
from billing.http import RequestBody, json_response
from billing.ops import adjustments
from pydantic import Field

router = APIGatewayHttpRouter()


class Adjust(RequestBody):
    delta: int = Field(ge=-(10**15), le=10**15)
    reason: str = Field(min_length=1, max_length=500)


@router.post("/admin/accounts/<user_id>/adjust")
def adjust_account(user_id: str, body: Adjust) -> Response[str]:
    admin = principal_from_event(router.current_event.raw_event)
    admin.require_admin()
    if body.delta == 0:
        raise InvalidRequest("delta must not be zero.")
    # A retried request with the same Idempotency-Key applies once; without one, each
    # request (API Gateway's request id) is its own cause.
    headers = router.current_event.headers or {}
    cause = headers.get("idempotency-key") or router.current_event.request_context.request_id
    if not cause or len(cause) > 128:
        raise InvalidRequest("Idempotency-Key must be 1 to 128 characters.")
    account = adjustments.adjust(admin.user_id, user_id, body.delta, body.reason, cause)
    return json_response(200, accounts.render_account(account))
