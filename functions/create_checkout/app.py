"""Create-checkout function: GET /topup/options, POST /checkout, GET /topups, GET /topups/{id}."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.utilities.typing import LambdaContext
from billing.errors import InvalidAmount
from billing.http import RequestBody, json_response, make_router, page_params, principal
from billing.idempotency import Reply, idempotent
from billing.payments import orders, topup_options
from billing.secrets import provider_secrets
from billing.settings import load_settings
from pydantic import Field

logger = Logger()
router = make_router(field_codes={"amount": InvalidAmount()})


class Checkout(RequestBody):
    """The client names what it buys, never a price (unknown fields → 400 invalid_request)."""

    method: str = Field(min_length=1, max_length=32)
    amount: int | None = None
    channel: str | None = Field(default=None, min_length=1, max_length=32)
    product_id: str | None = Field(default=None, min_length=1, max_length=64)


@router.get("/topup/options")
def get_options() -> Response[str]:
    principal(router)
    return json_response(200, topup_options.options(load_settings(), provider_secrets()))


@router.post("/checkout")
def create_checkout(body: Checkout) -> Response[str]:
    user = principal(router)

    def create(_cause: str) -> Reply:
        order = orders.checkout(
            user.user_id,
            body.method,
            amount=body.amount,
            channel=body.channel,
            product_id=body.product_id,
        )
        return Reply(201, orders.render_order(order))

    # A retry under the same Idempotency-Key gets the same order, never a second one.
    return idempotent(router, "checkout", user.user_id, body.model_dump(mode="json"), create)


@router.get("/topups")
def list_topups() -> Response[str]:
    user = principal(router)
    page = page_params(router, "topups", user.user_id)
    return json_response(200, page.seal(orders.list_orders(user.user_id, page.limit, page.cursor)))


@router.get("/topups/<order_id>")
def get_topup(order_id: str) -> Response[str]:
    user = principal(router)
    return json_response(200, orders.render_order(orders.get_order(user.user_id, order_id)))


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return router.resolve(event, context)
