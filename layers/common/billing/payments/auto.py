"""Off-session payments for auto top-up: an order with `auto: true` at the server's price,
charged to the user's saved Stripe card; credited later by the normal webhook pipeline.

The order is written pending BEFORE Stripe is asked (so the webhook finds it), under the id
the auto top-up marker claimed; the charge carries an idempotency key per order, so a retry
after a crash asks Stripe again and gets the same payment, never a second one.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aws_lambda_powertools import Logger
from pynamodb.exceptions import PutError

from billing import clock, money, retry
from billing.facts import OrderStatus
from billing.models import Order
from billing.payments import AutoCharge, customers, orders
from billing.payments.providers.stripe import PROVIDER as STRIPE
from billing.payments.topup_options import require_method
from billing.secrets import provider_secrets
from billing.settings import load_settings

logger = Logger(child=True)

METHOD = "stripe"


def price(amount: int) -> dict[str, Any]:
    settings = load_settings()
    _, config = require_method(settings, provider_secrets(), METHOD)
    quoted = orders.quote(settings, METHOD, config, amount=amount)
    return {
        "pay_money": money.format_amount(quoted.pay_money, quoted.currency, METHOD),
        "currency": quoted.currency,
        "quota": quoted.quota,
    }


def saved_card(user_id: str) -> dict[str, Any] | None:
    customer_id = customers.find(user_id)
    if customer_id is None:
        return None
    creds = provider_secrets()
    if not STRIPE.is_configured(creds):
        return None
    card = STRIPE.saved_card(customer_id, creds)
    return None if card is None else {"brand": card.get("brand"), "last4": card.get("last4")}


def _order(user_id: str, order_id: str, amount: int) -> Order:
    existing = orders.find_order(order_id)
    if existing is not None:
        return existing
    settings = load_settings()
    _, config = require_method(settings, provider_secrets(), METHOD)
    quoted = orders.quote(settings, METHOD, config, amount=amount)
    moment = clock.now()
    at = clock.iso(moment)
    order = Order(
        order_id=order_id,
        user_id=user_id,
        method=METHOD,
        amount=quoted.amount,
        pay_money=money.format_amount(quoted.pay_money, quoted.currency, METHOD),
        currency=quoted.currency,
        quota=quoted.quota,
        status=OrderStatus.PENDING,
        test_mode=config.test_mode,
        auto=True,
        created_at=at,
        expires_at=clock.iso(moment + timedelta(seconds=settings.limits.order_ttl_seconds)),
        pending_shard=orders.pending_shard(order_id),
        updated_at=at,
    )
    try:
        order.save(condition=Order.order_id.does_not_exist())
    except PutError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise
        found = orders.find_order(order_id)
        if found is None:
            raise
        return found
    return order


def charge_saved_card(user_id: str, order_id: str, amount: int) -> AutoCharge:
    order = _order(user_id, order_id, amount)
    if order.status != OrderStatus.PENDING:
        # Asked before and already answered (a retry after the answer was recorded).
        return AutoCharge(
            accepted=order.status == OrderStatus.PAID, code=order.failure_reason or ""
        )
    customer_id = customers.find(user_id)
    creds = provider_secrets()
    if customer_id is None:
        result = AutoCharge(False, "no_saved_card", "No card is saved for off-session payments.")
    else:
        result = STRIPE.charge_off_session(
            customer_id=customer_id,
            order_id=order.order_id,
            pay_money=money.parse(order.pay_money, order.currency),
            currency=order.currency,
            description=f"Auto top-up: {int(order.amount)} units ({int(order.quota)} quota)",
            test_mode=bool(order.test_mode),
            secrets=creds,
        )
    if not result.accepted:
        orders.mark_failed(order, result.code or "declined")
    elif result.provider_payment_id:
        payment_id = result.provider_payment_id
        retry.through_conflicts(
            lambda: order.update(
                actions=[
                    Order.provider_payment_id.set(payment_id),
                    Order.updated_at.set(clock.iso()),
                ],
                condition=Order.order_id.exists(),
            )
        )
    logger.info(
        "off-session charge",
        extra={"order_id": order.order_id, "accepted": result.accepted, "code": result.code},
    )
    return result
