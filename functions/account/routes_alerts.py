"""GET/PUT /account/alerts (the low-balance threshold) and GET/PUT /account/auto-topup."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from billing import autotopup, events
from billing.auth import principal_from_event
from billing.http import RequestBody, json_response
from pydantic import Field

router = APIGatewayHttpRouter()

MAX_QUOTA = 10**15


class Alerts(RequestBody):
    low_balance_threshold: int | None = Field(ge=0, le=MAX_QUOTA)


class AutoTopup(RequestBody):
    enabled: bool
    threshold: int = Field(ge=0, le=MAX_QUOTA)
    amount: int
    method: str = Field(min_length=1, max_length=32)
    max_per_day: int | None = Field(default=None, ge=1, le=24)


@router.get("/account/alerts")
def get_alerts() -> Response[str]:
    user = principal_from_event(router.current_event.raw_event)
    return json_response(200, events.get_alerts(user.user_id))


@router.put("/account/alerts")
def put_alerts(body: Alerts) -> Response[str]:
    user = principal_from_event(router.current_event.raw_event)
    return json_response(200, events.set_alerts(user.user_id, body.low_balance_threshold))


@router.get("/account/auto-topup")
def get_auto_topup() -> Response[str]:
    user = principal_from_event(router.current_event.raw_event)
    return json_response(200, autotopup.get_rule(user.user_id))


@router.put("/account/auto-topup")
def put_auto_topup(body: AutoTopup) -> Response[str]:
    user = principal_from_event(router.current_event.raw_event)
    rule = autotopup.put_rule(
        user.user_id,
        enabled=body.enabled,
        threshold=body.threshold,
        amount=body.amount,
        method=body.method,
        max_per_day=body.max_per_day,
    )
    return json_response(200, rule)
