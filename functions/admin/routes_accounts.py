"""POST /admin/accounts/{user_id}/adjust: a signed change of a balance with a reason."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from billing import accounts
from billing.auth import principal_from_event
from billing.errors import InvalidRequest
from billing.http import RequestBody
from billing.idempotency import Reply, idempotent
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

    def apply(cause: str) -> Reply:
        # The ledger entry's id comes from the cause: a retry applies once, even after its
        # stored reply has expired.
        account = adjustments.adjust(admin.user_id, user_id, body.delta, body.reason, cause)
        return Reply(200, accounts.render_account(account))

    request = {"user_id": user_id, **body.model_dump(mode="json")}
    return idempotent(router, "admin_adjust", admin.user_id, request, apply)
