"""POST /admin/topups/{order_id}/complete: credit an order by hand, once, with an audit record."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from billing.api_docs import BEARER, answers, ok
from billing.api_models_orders import Order
from billing.auth import principal_from_event
from billing.http import model_response
from billing.payments import crediting, orders

router = APIGatewayHttpRouter()


@router.post(
    "/admin/topups/<order_id>/complete",
    security=BEARER,
    responses=answers(ok(200, Order, "The order, paid (credited once)."), 401, 403, 404, 409, 413),
)
def complete_topup(order_id: str) -> Response[str]:
    admin = principal_from_event(router.current_event.raw_event)
    admin.require_admin()
    order = crediting.complete_by_admin(admin.user_id, order_id)
    return model_response(200, Order, orders.render_order(order))
