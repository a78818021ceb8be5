"""POST /admin/accounts/{user_id}/adjust: a signed change of a balance with a reason;
GET /admin/accounts/{user_id}/ledger/export: any user's ledger statement (CSV)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from billing import account_view, accounts, grant_terms
from billing.api_docs import (
    BEARER,
    CSV,
    IDEMPOTENCY_409,
    FromDay,
    IdempotencyKey,
    ToDay,
    answers,
    present,
    replayable,
    text,
)
from billing.api_models_accounts import Account
from billing.auth import principal_from_event
from billing.errors import InvalidRequest
from billing.http import RequestBody, checked, query_params
from billing.idempotency import Reply, idempotent
from billing.ops import adjustments, record_audit, statement
from pydantic import Field

router = APIGatewayHttpRouter()


class Adjust(RequestBody):
    delta: int = Field(ge=-(10**15), le=10**15)
    reason: str = Field(min_length=1, max_length=500)
    # Validated by billing.grant_terms (priority 0..100, one expiry, never past).
    grant: dict[str, Any] | None = None


@router.post(
    "/admin/accounts/<user_id>/adjust",
    security=BEARER,
    responses=answers(
        replayable(200, Account, "The account after the adjustment."),
        400,
        401,
        403,
        404,
        IDEMPOTENCY_409,
        413,
    ),
)
def adjust_account(
    user_id: str, body: Adjust, idempotency_key: IdempotencyKey = None
) -> Response[str]:
    admin = principal_from_event(router.current_event.raw_event)
    admin.require_admin()
    if body.delta == 0:
        raise InvalidRequest("delta must not be zero.")
    grant_terms.parse(body.grant)  # a bad grant object is 400 before anything is written
    if body.grant is not None and body.delta < 0:
        raise InvalidRequest("A grant object goes with a positive delta only.")

    def apply(cause: str) -> Reply:
        # The ledger entry's id comes from the cause: a retry applies once, even after its
        # stored reply has expired.
        account = adjustments.adjust(
            admin.user_id, user_id, body.delta, body.reason, cause, body.grant
        )
        return Reply(200, checked(Account, account_view.render_account(account)))

    request = {"user_id": user_id, **body.model_dump(mode="json")}
    return idempotent(router, "admin_adjust", admin.user_id, request, apply, idempotency_key)


@router.get(
    "/admin/accounts/<user_id>/ledger/export",
    security=BEARER,
    responses=answers(
        text(200, "Any user's ledger entries of the range as CSV, oldest first.", CSV),
        400,
        401,
        403,
        404,
    ),
)
def export_ledger(user_id: str, from_: FromDay = None, to: ToDay = None) -> Response[str]:
    admin = principal_from_event(router.current_event.raw_event)
    admin.require_admin()
    accounts.get_account(user_id)  # 404 account_not_found for a user without an account
    query_params(router, "from", "to")  # no other
    body, span = statement.statement_csv(user_id, present({"from": from_, "to": to}))
    # Who read whose statement, for which range (never its content).
    record_audit(
        admin.user_id,
        "ledger.export",
        user_id,
        {"from": span.start.isoformat(), "to": span.end.isoformat()},
    )
    return Response(
        status_code=200,
        content_type="text/csv; charset=utf-8",
        body=body,
        headers={
            "Content-Disposition": f'attachment; filename="{statement.filename(user_id, span)}"'
        },
    )
