"""GET/PUT /account/alerts (the low-balance threshold) and GET/PUT /account/auto-topup."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from billing import autotopup, events
from billing.api_docs import BEARER, answers, ok
from billing.api_models_alerts import Alerts, AutoTopupRule
from billing.auth import principal_from_event
from billing.http import RequestBody, model_response
from pydantic import Field

router = APIGatewayHttpRouter()

MAX_QUOTA = 10**15


class PutAlerts(RequestBody):
    low_balance_threshold: int | None = Field(ge=0, le=MAX_QUOTA)


class AutoTopup(RequestBody):
    enabled: bool
    threshold: int = Field(ge=0, le=MAX_QUOTA)
    amount: int
    method: str = Field(min_length=1, max_length=32)
    max_per_day: int | None = Field(default=None, ge=1, le=24)


@router.get(
    "/account/alerts",
    security=BEARER,
    responses=answers(ok(200, Alerts, "The threshold."), 401, 404),
)
def get_alerts() -> Response[str]:
    user = principal_from_event(router.current_event.raw_event)
    return model_response(200, Alerts, events.get_alerts(user.user_id))


@router.put(
    "/account/alerts",
    security=BEARER,
    responses=answers(ok(200, Alerts, "The threshold, set (null: none)."), 400, 401, 404, 413),
)
def put_alerts(body: PutAlerts) -> Response[str]:
    user = principal_from_event(router.current_event.raw_event)
    alerts = events.set_alerts(user.user_id, body.low_balance_threshold)
    return model_response(200, Alerts, alerts)


@router.get(
    "/account/auto-topup",
    security=BEARER,
    responses=answers(ok(200, AutoTopupRule, "The rule, or {enabled: false}."), 401, 404, 502),
)
def get_auto_topup() -> Response[str]:
    user = principal_from_event(router.current_event.raw_event)
    return model_response(200, AutoTopupRule, autotopup.get_rule(user.user_id))


@router.put(
    "/account/auto-topup",
    security=BEARER,
    responses=answers(
        ok(200, AutoTopupRule, "The rule (no_saved_card: 400 when enabling without one)."),
        400,
        401,
        404,
        413,
        502,
    ),
)
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
    return model_response(200, AutoTopupRule, rule)
