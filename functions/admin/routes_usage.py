"""Admin routes of unbilled usage: list what could not be billed, and re-meter it."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from billing.auth import Principal, principal_from_event
from billing.http import json_response, page_params
from billing.usage import unbilled

router = APIGatewayHttpRouter()


def _admin() -> Principal:
    admin = principal_from_event(router.current_event.raw_event)
    admin.require_admin()
    return admin


@router.get("/admin/unbilled-usage")
def list_unbilled_usage() -> Response[str]:
    admin = _admin()
    page = page_params(router, "unbilled_usage", admin.user_id)
    return json_response(200, page.seal(unbilled.list_open(page.limit, page.cursor)))


@router.post("/admin/unbilled-usage/<request_id>/remeter")
def remeter_unbilled_usage(request_id: str) -> Response[str]:
    admin = _admin()
    return json_response(200, unbilled.render(unbilled.remeter(admin.user_id, request_id)))
