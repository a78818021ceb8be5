"""Top-up orders: the server-side quote, checkout (order first, then the provider), reading.

The price is computed here from the settings and nowhere else: the client names an amount (or a
product, for a product-based method) and never a price. The order is written `pending` BEFORE
the provider is asked for a payment, so a webhook always finds its order; if the provider call
fails the order is marked `failed` at once, so no pending order is left behind for nothing.

A pending order lives `limits.order_ttl_seconds`: past its `expires_at` it reads as `expired`
at once, and the scheduled sweep (`expire_overdue`) writes it so, through the sparse
`open_orders` index that holds only pending orders. A payment that reaches us after that is
never credited by itself (billing.payments.crediting).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import string
from datetime import timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from aws_lambda_powertools import Logger
from pynamodb.exceptions import DoesNotExist, PynamoDBException, UpdateError
from pynamodb.expressions.update import Action

from billing import accounts, clock, money, retry
from billing.errors import DomainError, InvalidAmount, InvalidRequest, NotFound, ProviderError
from billing.facts import OrderStatus
from billing.models import Order
from billing.pagination import newest_first
from billing.payments.providers.base import CheckoutRequest
from billing.payments.topup_options import require_method
from billing.secrets import provider_secrets
from billing.settings import PaymentMethod, Settings, load_settings

logger = Logger(child=True)

ORDER_PREFIX = "ord_"
_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 24  # ~143 bits: order ids are unguessable, and plain enough for every gateway
MAX_ORDER_ID_LENGTH = 64

EXPIRED_BY_TTL = "ttl"  # failure_reason of an order expired by its lifetime
PENDING_SHARDS = 4  # open_orders index keys: pending orders spread so no key gets hot
_SWEEP_MAX = 1000  # orders one sweep expires at most (the schedule picks up the rest)


class Quote(NamedTuple):
    method: str
    amount: int  # top-up units; 0 for a product-based order
    pay_money: Decimal  # major units, already rounded to the currency's minor unit
    currency: str
    quota: int
    channel: str | None = None
    product_id: str | None = None
    description: str = ""


def new_order_id() -> str:
    return ORDER_PREFIX + "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


def quote(
    settings: Settings,
    method: str,
    config: PaymentMethod,
    *,
    amount: int | None,
    channel: str | None = None,
    product_id: str | None = None,
) -> Quote:
    """What the order costs and buys: amount * unit_price * discount (half-up to the
    currency's minor unit) and amount * quota_per_unit, or the product's price and quota."""
    channel = _channel(config, channel)
    if config.products:
        if amount is not None or product_id is None:
            raise InvalidRequest("This method sells products: send product_id, not amount.")
        product = next((p for p in config.products if p.product_id == product_id), None)
        if product is None:
            raise InvalidRequest("Unknown product_id for this method.")
        return Quote(
            method=method,
            amount=0,
            pay_money=money.quantize(product.price, product.currency, method),
            currency=product.currency,
            quota=product.quota,
            channel=channel,
            product_id=product.product_id,
            description=product.name,
        )
    if product_id is not None:
        raise InvalidRequest("This method takes an amount, not a product_id.")
    topup = settings.topup
    if (
        not isinstance(amount, int)
        or isinstance(amount, bool)
        or not topup.min_topup <= amount <= topup.max_topup
    ):
        raise InvalidAmount(
            f"The amount must be a whole number from {topup.min_topup} to {topup.max_topup}."
        )
    # Rounded to what this provider can charge in the currency (Waffo: whole rupiah; Stripe:
    # IDR in sen, ISK in whole krónur), so the provider is asked for exactly pay_money.
    pay_money = money.quantize(
        Decimal(amount) * config.unit_price * topup.discount_for(amount), config.currency, method
    )
    if pay_money <= 0:
        raise InvalidAmount("The amount is too small to be paid in this currency.")
    quota = amount * settings.quota_per_unit
    return Quote(
        method=method,
        amount=amount,
        pay_money=pay_money,
        currency=config.currency,
        quota=quota,
        channel=channel,
        description=f"Top-up: {amount} units ({quota} quota)",
    )


def _channel(config: PaymentMethod, channel: str | None) -> str | None:
    if not config.channels:
        if channel is not None:
            raise InvalidRequest("This method has no channels.")
        return None
    if channel is None:
        return config.channels[0]
    if channel not in config.channels:
        raise InvalidRequest("Unknown channel for this method.")
    return channel


def _urls(settings: Settings, method: str, order_id: str) -> tuple[str, str, str]:
    api_base = os.environ.get("API_BASE_URL", "").rstrip("/")
    console = os.environ.get("CONSOLE_URL", "").rstrip("/") or api_base
    success = settings.urls.success_url.format(console=console, order_id=order_id)
    cancel = settings.urls.cancel_url.format(console=console, order_id=order_id)
    return success, cancel, f"{api_base}/webhooks/{method}"


def checkout(
    user_id: str,
    method: str,
    *,
    amount: int | None,
    channel: str | None = None,
    product_id: str | None = None,
    save_card: bool = False,
) -> Order:
    """Create a pending order for exactly the quoted price and ask its provider for a payment.
    With save_card (Stripe only), the card paid with is kept for off-session payments.

    Raises MethodUnavailable, InvalidAmount, InvalidRequest (nothing written), AccountNotFound,
    or ProviderError (the order is then `failed`).
    """
    settings = load_settings()
    creds = provider_secrets()
    provider, config = require_method(settings, creds, method)
    if save_card and method != "stripe":
        raise InvalidRequest("save_card is available with method stripe only.")
    priced = quote(settings, method, config, amount=amount, channel=channel, product_id=product_id)
    accounts.get_account(user_id)  # credit needs an account: refuse before writing anything
    customer_id = _stripe_customer(user_id, creds) if save_card else None

    moment = clock.now()
    at = clock.iso(moment)
    order_id = new_order_id()
    order = Order(
        order_id=order_id,
        user_id=user_id,
        method=method,
        channel=priced.channel,
        product_id=priced.product_id,
        amount=priced.amount,
        pay_money=money.format_amount(priced.pay_money, priced.currency, method),
        currency=priced.currency,
        quota=priced.quota,
        status=OrderStatus.PENDING,
        test_mode=config.test_mode,
        created_at=at,
        expires_at=clock.iso(moment + timedelta(seconds=settings.limits.order_ttl_seconds)),
        pending_shard=pending_shard(order_id),
        updated_at=at,
        save_card=True if save_card else None,
    )
    order.save(condition=Order.order_id.does_not_exist())

    success_url, cancel_url, notify_url = _urls(settings, method, order.order_id)
    request = CheckoutRequest(
        order_id=order.order_id,
        user_id=user_id,
        method=method,
        amount=priced.amount,
        pay_money=priced.pay_money,
        currency=priced.currency,
        quota=priced.quota,
        description=priced.description,
        success_url=success_url,
        cancel_url=cancel_url,
        notify_url=notify_url,
        channel=priced.channel,
        product_id=priced.product_id,
        test_mode=config.test_mode,
        customer_id=customer_id,
    )
    try:
        session = provider.create_payment(request, creds)
    except Exception as exc:
        _mark_failed(order, "provider_error")
        if isinstance(exc, DomainError):
            raise
        logger.exception("provider call failed", extra={"order_id": order.order_id})
        raise ProviderError() from exc

    actions: list[Action] = [Order.pay_url.set(session.pay_url), Order.updated_at.set(clock.iso())]
    if session.session_id:
        actions.append(Order.provider_session_id.set(session.session_id))
    # A provider's event for the order may already be crediting it in a transaction.
    retry.through_conflicts(
        lambda: order.update(actions=actions, condition=Order.order_id.exists())
    )
    logger.info(
        "checkout created",
        extra={"order_id": order.order_id, "method": method, "pay_money": order.pay_money},
    )
    return order


def _stripe_customer(user_id: str, creds: dict[str, str]) -> str:
    """The user's Stripe customer (created once), for a checkout that saves the card."""
    from billing.payments import customers
    from billing.payments.providers.stripe import PROVIDER as STRIPE

    known = customers.find(user_id)
    if known is not None:
        return known
    return customers.store(user_id, STRIPE.create_customer(user_id, creds))


def pending_shard(order_id: str) -> str:
    number = int(hashlib.sha256(order_id.encode()).hexdigest()[:8], 16) % PENDING_SHARDS
    return f"p#{number}"


def expires_at(order: Order) -> str | None:
    """When the order stops being payable (orders from before lifetimes: none)."""
    return order.expires_at or None


def is_overdue(order: Order, at: str | None = None) -> bool:
    """A pending order past its lifetime (it reads as expired even before the sweep)."""
    deadline = expires_at(order)
    return (
        order.status == OrderStatus.PENDING
        and deadline is not None
        and (at or clock.iso()) > deadline
    )


def mark_failed(order: Order, reason: str) -> None:
    """A pending order whose payment was refused: failed (nothing was paid)."""
    _mark_failed(order, reason)


def _mark_failed(order: Order, reason: str) -> None:
    try:
        retry.through_conflicts(
            lambda: order.update(
                actions=[
                    Order.status.set(OrderStatus.FAILED),
                    Order.failure_reason.set(reason),
                    Order.pending_shard.remove(),
                    Order.updated_at.set(clock.iso()),
                ],
                condition=Order.status == OrderStatus.PENDING,
            )
        )
    except PynamoDBException:
        # The provider error is what the caller must see; the order stays pending and
        # can never be credited without a verified payment anyway.
        logger.exception("could not mark the order failed", extra={"order_id": order.order_id})


def get_order(user_id: str, order_id: str) -> Order:
    """The caller's own order; another user's order is NotFound, like a missing one."""
    if not order_id or len(order_id) > MAX_ORDER_ID_LENGTH:
        raise NotFound("No such order.")
    try:
        order = Order.get(order_id, consistent_read=True)
    except DoesNotExist as exc:
        raise NotFound("No such order.") from exc
    if order.user_id != user_id:
        raise NotFound("No such order.")
    return order


def find_order(order_id: str) -> Order | None:
    if not order_id or len(order_id) > MAX_ORDER_ID_LENGTH:
        return None
    try:
        return Order.get(order_id, consistent_read=True)
    except DoesNotExist:
        return None


def list_orders(user_id: str, limit: int, cursor: str | None) -> dict[str, Any]:
    """The user's orders, newest first. The by_user index lags its table (an order paid a
    moment ago may still read pending there), so the page is read again from the table,
    consistently: what the history shows agrees with GET /topups/{order_id}."""
    return newest_first(
        Order.by_user.query, "user_id", user_id, limit, cursor, render_order, refresh=_current
    )


def _current(page: list[Order]) -> list[Order]:
    """The page's orders as the table holds them now, in the page's order."""
    ids = [o.order_id for o in page]
    fresh = {o.order_id: o for o in Order.batch_get(ids, consistent_read=True)}
    return [fresh[o.order_id] for o in page if o.order_id in fresh]


def render_order(order: Order) -> dict[str, Any]:
    """An order as API.md names it (plus channel/product_id, expires_at and failure_reason
    when set). A pending order past its lifetime is shown expired, as the sweep will store it."""
    overdue = is_overdue(order)
    refunded = Decimal(order.refunded_money) if order.refunded_money else Decimal(0)
    rendered: dict[str, Any] = {
        "order_id": order.order_id,
        "method": order.method,
        "amount": int(order.amount),
        "pay_money": order.pay_money,
        "currency": order.currency,
        "quota": int(order.quota),
        "status": OrderStatus.EXPIRED if overdue else order.status,
        "refunded_money": money.format_exact(refunded, order.currency, order.method),
        "created_at": order.created_at,
        "paid_at": order.paid_at,
    }
    if order.pay_url:
        rendered["pay_url"] = order.pay_url
    if order.channel:
        rendered["channel"] = order.channel
    if order.product_id:
        rendered["product_id"] = order.product_id
    if order.expires_at:
        rendered["expires_at"] = order.expires_at
    if order.auto:
        rendered["auto"] = True
    if order.save_card:
        rendered["save_card"] = True
    reason = EXPIRED_BY_TTL if overdue else order.failure_reason
    if reason:
        rendered["failure_reason"] = reason
    return rendered


# ---------------------------------------------------------------- the expiry sweep


def expire_overdue() -> dict[str, int]:
    """Expire every pending order past its lifetime (the schedule's job), once each.

    Reads only the sparse open_orders index. The write is conditional on the order still
    being pending, so a payment credited meanwhile wins; an entry whose order already left
    pending (its shard not cleared) is cleared.
    """
    cutoff = clock.iso()
    counts = {"expired": 0, "cleared": 0}
    for shard in range(PENDING_SHARDS):
        for hit in Order.open_orders.query(f"p#{shard}", Order.expires_at < cutoff):
            if counts["expired"] + counts["cleared"] >= _SWEEP_MAX:
                return counts
            counts[_expire(hit)] += 1
    if counts["expired"]:
        logger.info("overdue orders expired", extra=counts)
    return counts


def _expire(hit: Order) -> str:
    at = clock.iso()
    try:
        # A late payment's credit transaction may hold the order: try again, never skip it.
        retry.through_conflicts(
            lambda: hit.update(
                actions=[
                    Order.status.set(OrderStatus.EXPIRED),
                    Order.failure_reason.set(EXPIRED_BY_TTL),
                    Order.pending_shard.remove(),
                    Order.updated_at.set(at),
                ],
                condition=(Order.status == OrderStatus.PENDING) & Order.pending_shard.exists(),
            )
        )
        return "expired"
    except UpdateError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise
    try:
        retry.through_conflicts(
            lambda: hit.update(
                actions=[Order.pending_shard.remove()],
                condition=(Order.status != OrderStatus.PENDING) & Order.order_id.exists(),
            )
        )
    except UpdateError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise
    return "cleared"
