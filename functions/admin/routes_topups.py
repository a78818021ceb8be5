"""POST /admin/topups/{order_id}/complete: credit an order by hand, once, with an audit record."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from billing.auth import principal_from_event
from billing.http import json_response
from billing.payments import crediting, orders

router = APIGatewayHttpRouter()


@router.post("/admin/topups/<order_id>/complete")
def complete_topup(order_id: str) -> Response[str]:
    admin = principal_from_event(router.current_event.raw_event)
    admin.require_admin()
    order = crediting.complete_by_admin(admin.user_id, order_id)
    return json_response(200, orders.render_order(order))
