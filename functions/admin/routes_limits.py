"""Admin spend limit routes: any user's limits (GET /admin/accounts/{user_id}/limits, PUT and
DELETE /admin/accounts/{user_id}/limits/{scope}); changes are audited."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from billing.api_docs import BEARER, answers, ok
from billing.api_models_limits import LimitDeleted, SpendLimit, SpendLimits
from billing.auth import Principal, principal_from_event
from billing.http import RequestBody, model_response
from billing.ops import record_audit
from billing.usage import spend_limits

router = APIGatewayHttpRouter()


class PutLimit(RequestBody):
    max_quota: int
    period: str


def _admin() -> Principal:
    admin = principal_from_event(router.current_event.raw_event)
    admin.require_admin()
    return admin


@router.get(
    "/admin/accounts/<user_id>/limits",
    security=BEARER,
    responses=answers(
        ok(200, SpendLimits, "Any user's spend limits with their windows' spend."), 401, 403, 404
    ),
)
def list_limits(user_id: str) -> Response[str]:
    _admin()
    return model_response(200, SpendLimits, spend_limits.list_limits(user_id))


@router.put(
    "/admin/accounts/<user_id>/limits/<scope>",
    security=BEARER,
    responses=answers(ok(200, SpendLimit, "The limit as set (audited)."), 400, 401, 403, 404, 413),
)
def put_limit(user_id: str, scope: str, body: PutLimit) -> Response[str]:
    admin = _admin()
    limit = spend_limits.put_limit(user_id, scope, body.max_quota, body.period)
    record_audit(admin.user_id, "limit_set", user_id, body.model_dump() | {"scope": scope})
    return model_response(200, SpendLimit, limit)


@router.delete(
    "/admin/accounts/<user_id>/limits/<scope>",
    security=BEARER,
    responses=answers(ok(200, LimitDeleted, "The limit is gone (audited)."), 400, 401, 403, 404),
)
def delete_limit(user_id: str, scope: str) -> Response[str]:
    admin = _admin()
    result = spend_limits.delete_limit(user_id, scope)
    record_audit(admin.user_id, "limit_deleted", user_id, {"scope": scope})
    return model_response(200, LimitDeleted, result)
