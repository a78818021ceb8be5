"""Admin routes of unbilled usage: list what could not be billed, and re-meter it."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from billing.api_docs import BEARER, DEFAULT_LIMIT, Cursor, Limit, answers, ok
from billing.api_models_unbilled import UnbilledUsage, UnbilledUsagePage
from billing.auth import Principal, principal_from_event
from billing.http import model_response, open_page
from billing.usage import unbilled

router = APIGatewayHttpRouter()


def _admin() -> Principal:
    admin = principal_from_event(router.current_event.raw_event)
    admin.require_admin()
    return admin


@router.get(
    "/admin/unbilled-usage",
    security=BEARER,
    responses=answers(
        ok(200, UnbilledUsagePage, "Open unbilled usage, newest first."), 400, 401, 403
    ),
)
def list_unbilled_usage(limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> Response[str]:
    admin = _admin()
    page = open_page("unbilled_usage", admin.user_id, limit, cursor)
    listed = unbilled.list_open(page.limit, page.cursor)
    return model_response(200, UnbilledUsagePage, page.seal(listed))


@router.post(
    "/admin/unbilled-usage/<request_id>/remeter",
    security=BEARER,
    responses=answers(
        ok(200, UnbilledUsage, "Billed now (or before): the item, remetered."),
        401,
        403,
        404,
        409,
        503,
    ),
)
def remeter_unbilled_usage(request_id: str) -> Response[str]:
    admin = _admin()
    item = unbilled.render(unbilled.remeter(admin.user_id, request_id))
    return model_response(200, UnbilledUsage, item)
