"""Create-checkout function: GET /topup/options, POST /checkout, GET /topups, GET /topups/{id}."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from billing import init_phase
from billing.api_docs import (
    BEARER,
    DEFAULT_LIMIT,
    IDEMPOTENCY_409,
    Cursor,
    IdempotencyKey,
    Limit,
    answers,
    ok,
    replayable,
)
from billing.api_models_orders import Order
from billing.api_models_topups import OrderPage, TopupOptions
from billing.errors import InvalidAmount
from billing.http import RequestBody, checked, make_router, model_response, open_page, principal
from billing.idempotency import Reply, idempotent
from billing.payments import orders, topup_options
from billing.secrets import provider_secrets
from billing.settings import load_settings
from pydantic import Field

if TYPE_CHECKING:
    # An annotation only: Powertools' typing module is nothing the handler runs.
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
router = make_router(field_codes={"amount": InvalidAmount()})


class Checkout(RequestBody):
    """The client names what it buys, never a price (unknown fields → 400 invalid_request)."""

    method: str = Field(min_length=1, max_length=32)
    amount: int | None = None
    channel: str | None = Field(default=None, min_length=1, max_length=32)
    product_id: str | None = Field(default=None, min_length=1, max_length=64)
    # Stripe: keep the card for off-session payments (auto top-up).
    save_card: bool = False


@router.get(
    "/topup/options",
    security=BEARER,
    responses=answers(ok(200, TopupOptions, "What can be bought, and how."), 401),
)
def get_options() -> Response[str]:
    principal(router)
    options = topup_options.options(load_settings(), provider_secrets())
    return model_response(200, TopupOptions, options)


@router.post(
    "/checkout",
    security=BEARER,
    responses=answers(
        replayable(201, Order, "A pending order with its pay_url."),
        400,
        401,
        404,
        IDEMPOTENCY_409,
        413,
        502,
    ),
)
def create_checkout(body: Checkout, idempotency_key: IdempotencyKey = None) -> Response[str]:
    user = principal(router)

    def create(_cause: str) -> Reply:
        order = orders.checkout(
            user.user_id,
            body.method,
            amount=body.amount,
            channel=body.channel,
            product_id=body.product_id,
            save_card=body.save_card,
        )
        return Reply(201, checked(Order, orders.render_order(order)))

    # A retry under the same Idempotency-Key gets the same order, never a second one.
    request = body.model_dump(mode="json")
    return idempotent(router, "checkout", user.user_id, request, create, idempotency_key)


@router.get(
    "/topups",
    security=BEARER,
    responses=answers(ok(200, OrderPage, "The user's orders, newest first."), 400, 401),
)
def list_topups(limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> Response[str]:
    user = principal(router)
    page = open_page("topups", user.user_id, limit, cursor)
    listed = orders.list_orders(user.user_id, page.limit, page.cursor)
    return model_response(200, OrderPage, page.seal(listed))


@router.get(
    "/topups/<order_id>",
    security=BEARER,
    responses=answers(ok(200, Order, "The order."), 401, 404),
)
def get_topup(order_id: str) -> Response[str]:
    user = principal(router)
    order = orders.get_order(user.user_id, order_id)
    return model_response(200, Order, orders.render_order(order))


@logger.inject_lambda_context(
    clear_state=True, correlation_id_path=correlation_paths.API_GATEWAY_HTTP
)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return router.resolve(event, context)


# INIT is over: garbage collection resumes (billing.init_phase).
init_phase.finished()
