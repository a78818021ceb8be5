"""Creem: product-based checkouts, webhooks signed with HMAC-SHA256 of the raw body.

Prices live in Creem (per product) and in our settings (the same products, with the quota each
buys); the order takes the product's price, and crediting compares what Creem reports as paid
with it, so a product priced differently in Creem ends up `disputed`, never over-credited.
`requests` is imported inside create_payment: the webhook handler never needs it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger

from billing.errors import ProviderError
from billing.payments.providers.base import (
    CheckoutRequest,
    EventType,
    InvalidSignature,
    PaymentEvent,
    PaymentSession,
    UnsupportedEvent,
    WebhookReply,
    WebhookRequest,
)
from billing.payments.providers.payload import (
    currency_code,
    json_ack,
    minor_amount,
    text_or_id,
    verified_object,
)

logger = Logger(child=True)

API_BASE_ENV = "CREEM_API_BASE"
SIGNATURE_HEADER = "creem-signature"
# Connect 3 s, read 8 s: inside the checkout function's 20 s timeout. No retry: a checkout
# create is cheap to redo by the user, and Creem takes request_id only as a reference.
_TIMEOUT = (3.05, 8.0)
ONE_TIME = "onetime"
# Refund states that mean no money went back (anything else is treated as refunded).
_NOT_REFUNDED = frozenset({"failed", "canceled", "cancelled", "pending"})


def _api_base() -> str:
    return os.environ.get(API_BASE_ENV, "").strip().rstrip("/")


def signature(raw_body: bytes, secret: str) -> str:
    """Creem's `creem-signature`: hex HMAC-SHA256 of the raw body with the webhook secret."""
    return hmac.new(secret.encode("utf-8"), raw_body, hashlib.sha256).hexdigest()


def verify(raw_body: bytes, header: str | None, secret: str) -> bool:
    if not secret or not header:
        return False
    expected = signature(raw_body, secret).encode()
    return hmac.compare_digest(expected, header.strip().lower().encode())


def _key_mode(api_key: str) -> bool | None:
    """True for a test key, False for a live key, None when the prefix does not say."""
    if api_key.startswith("creem_test_"):
        return True
    if api_key.startswith("creem_"):
        return False
    return None


class CreemProvider:
    method = "creem"

    def is_configured(self, secrets: dict[str, str]) -> bool:
        return (
            bool(secrets.get("creem_api_key"))
            and bool(secrets.get("creem_webhook_secret"))
            and bool(_api_base())
        )

    def checkout_body(self, request: CheckoutRequest) -> dict[str, Any]:
        if not request.product_id:
            raise ProviderError("Creem sells products: the order has no product.")
        return {
            "product_id": request.product_id,
            "request_id": request.order_id,
            "metadata": {"order_id": request.order_id, "user_id": request.user_id},
            "success_url": request.success_url,
        }

    def create_payment(self, request: CheckoutRequest, secrets: dict[str, str]) -> PaymentSession:
        import requests

        base = _api_base()
        api_key = secrets.get("creem_api_key", "")
        if not base or not api_key:
            logger.error("creem is not configured")
            raise ProviderError("The payment method is misconfigured.")
        mode = _key_mode(api_key)
        if mode is not None and mode != request.test_mode:
            # Test and live never mix: a live key must not serve a test-mode method.
            logger.error("creem key mode does not match the method's test_mode")
            raise ProviderError("The payment method is misconfigured.")
        try:
            response = requests.post(
                f"{base}/v1/checkouts",
                json=self.checkout_body(request),
                headers={"x-api-key": api_key, "accept": "application/json"},
                timeout=_TIMEOUT,
            )
        except requests.RequestException as exc:
            logger.warning(
                "creem unreachable",
                extra={"order_id": request.order_id, "error_type": type(exc).__name__},
            )
            raise ProviderError() from exc
        if response.status_code // 100 != 2:
            logger.warning(
                "creem refused the checkout",
                extra={"order_id": request.order_id, "http_status": response.status_code},
            )
            raise ProviderError()
        try:
            session: Any = response.json()
        except ValueError as exc:
            raise ProviderError() from exc
        pay_url = text_or_id(session.get("checkout_url")) if isinstance(session, dict) else None
        if pay_url is None or not pay_url.startswith(("https://", "http://")):
            logger.warning("creem checkout without a url", extra={"order_id": request.order_id})
            raise ProviderError()
        return PaymentSession(pay_url=pay_url, session_id=text_or_id(session.get("id")))

    def parse_webhook(self, request: WebhookRequest, secrets: dict[str, str]) -> list[PaymentEvent]:
        secret = secrets.get("creem_webhook_secret", "")
        if not verify(request.raw_body, request.headers.get(SIGNATURE_HEADER), secret):
            raise InvalidSignature("bad or missing creem signature")
        return [map_event(verified_object(request.raw_body))]

    def reply(self, accepted: bool, secrets: dict[str, str]) -> WebhookReply:
        return json_ack(accepted, refused_status=401)


def map_event(event: Mapping[str, Any]) -> PaymentEvent:
    """A verified Creem event as a PaymentEvent; UnsupportedEvent for anything we ignore."""
    event_id = text_or_id(event.get("id"))
    kind = text_or_id(event.get("eventType")) or ""
    obj = event.get("object")
    if event_id is None or not isinstance(obj, Mapping):
        raise UnsupportedEvent(kind or "malformed")
    detail = {"creem_type": kind}
    if text_or_id(obj.get("id")):
        detail["object_id"] = str(obj.get("id"))

    if kind == "checkout.completed":
        order = obj.get("order")
        metadata = obj.get("metadata")
        order_id = text_or_id(obj.get("request_id")) or (
            text_or_id(metadata.get("order_id")) if isinstance(metadata, Mapping) else None
        )
        if order_id is None or not isinstance(order, Mapping):
            raise UnsupportedEvent(kind)  # not a checkout we created
        if order.get("status") != "paid":
            raise UnsupportedEvent(f"{kind} unpaid")
        if order.get("type", ONE_TIME) != ONE_TIME:
            raise UnsupportedEvent(f"{kind} {str(order.get('type'))[:20]}")  # we sell one-time
        currency = currency_code(order.get("currency"))
        return PaymentEvent(
            provider="creem",
            event_id=event_id,
            type=EventType.PAID,
            order_id=order_id,
            amount=minor_amount(order.get("amount"), currency, "creem"),
            currency=currency,
            provider_payment_id=text_or_id(order.get("id")),
            detail=detail,
        )
    if kind == "refund.created":
        status = text_or_id(obj.get("status"))
        if status is not None and status.lower() in _NOT_REFUNDED:
            raise UnsupportedEvent(f"{kind} {status[:20]}")
        order = obj.get("order")
        checkout = obj.get("checkout")
        payment_id = text_or_id(order)
        order_id = text_or_id(checkout.get("request_id")) if isinstance(checkout, Mapping) else None
        if order_id is None and payment_id is None:
            raise UnsupportedEvent(kind)
        currency = currency_code(obj.get("refund_currency"))
        amount = minor_amount(obj.get("refund_amount"), currency, "creem")
        full = False
        if isinstance(order, Mapping):
            paid = minor_amount(order.get("amount"), currency_code(order.get("currency")), "creem")
            full = amount is not None and paid is not None and amount >= paid
        # Each refund (partial or not) is its own refund.created with its own id and amount.
        return PaymentEvent(
            provider="creem",
            event_id=event_id,
            type=EventType.REFUNDED,
            order_id=order_id,
            amount=amount,
            currency=currency,
            provider_payment_id=payment_id,
            detail=detail,
            full_refund=full,
            refund_id=text_or_id(obj.get("id")) or event_id,
        )
    raise UnsupportedEvent(kind)


PROVIDER = CreemProvider()
