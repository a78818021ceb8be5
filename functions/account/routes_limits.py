"""Spend limit routes: GET /limits, PUT /limits/{scope}, DELETE /limits/{scope}."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from billing.api_docs import BEARER, answers, ok
from billing.api_models_limits import LimitDeleted, SpendLimit, SpendLimits
from billing.auth import principal_from_event
from billing.http import RequestBody, model_response
from billing.usage import spend_limits

router = APIGatewayHttpRouter()


class PutLimit(RequestBody):
    # Checked in billing.usage.limits (range, period names), so the message names the rule.
    max_quota: int
    period: str


def _caller() -> str:
    return principal_from_event(router.current_event.raw_event).user_id


@router.get(
    "/limits",
    security=BEARER,
    responses=answers(
        ok(200, SpendLimits, "The caller's spend limits with their windows' spend."), 401, 404
    ),
)
def list_limits() -> Response[str]:
    return model_response(200, SpendLimits, spend_limits.list_limits(_caller()))


@router.put(
    "/limits/<scope>",
    security=BEARER,
    responses=answers(ok(200, SpendLimit, "The limit as set."), 400, 401, 404, 413),
)
def put_limit(scope: str, body: PutLimit) -> Response[str]:
    limit = spend_limits.put_limit(_caller(), scope, body.max_quota, body.period)
    return model_response(200, SpendLimit, limit)


@router.delete(
    "/limits/<scope>",
    security=BEARER,
    responses=answers(
        ok(200, LimitDeleted, "The limit is gone (deleted: whether there was one)."),
        400,
        401,
        404,
    ),
)
def delete_limit(scope: str) -> Response[str]:
    return model_response(200, LimitDeleted, spend_limits.delete_limit(_caller(), scope))
