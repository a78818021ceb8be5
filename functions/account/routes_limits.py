"""Spend limit routes: GET /limits, PUT /limits/{scope}, DELETE /limits/{scope}."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from billing.auth import principal_from_event
from billing.http import RequestBody, json_response
from billing.usage import spend_limits

router = APIGatewayHttpRouter()


class PutLimit(RequestBody):
    # Checked in billing.usage.limits (range, period names), so the message names the rule.
    max_quota: int
    period: str


def _caller() -> str:
    return principal_from_event(router.current_event.raw_event).user_id


@router.get("/limits")
def list_limits() -> Response[str]:
    return json_response(200, spend_limits.list_limits(_caller()))


@router.put("/limits/<scope>")
def put_limit(scope: str, body: PutLimit) -> Response[str]:
    limit = spend_limits.put_limit(_caller(), scope, body.max_quota, body.period)
    return json_response(200, limit)


@router.delete("/limits/<scope>")
def delete_limit(scope: str) -> Response[str]:
    return json_response(200, spend_limits.delete_limit(_caller(), scope))
