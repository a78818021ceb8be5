"""Stripe: Checkout Sessions for exactly pay_money, and signed webhooks (official SDK).

The SDK is imported inside the functions that need it: it is large, and only the handlers that
actually talk to Stripe should pay for importing it on a cold start.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from billing import money
from billing.errors import ProviderError
from billing.payments.providers import http_client
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
from billing.restore import after_restore

if TYPE_CHECKING:
    from stripe import StripeClient

logger = Logger(child=True)

DEFAULT_API_BASE = "https://api.stripe.com"
WEBHOOK_TOLERANCE_SECONDS = 300  # Stripe's default: older signatures are replays
SIGNATURE_HEADER = "stripe-signature"
# One retry (safe: every create carries an idempotency key); the timeouts and the HTTP
# session are the providers' shared ones (http_client).
_RETRIES = 1

_clients: dict[tuple[str, str], StripeClient] = {}
_clients_lock = threading.Lock()


def _client(api_key: str) -> StripeClient:
    """One StripeClient (and HTTP session) per key and API base, for the process."""
    api_base = os.environ.get("STRIPE_API_BASE") or DEFAULT_API_BASE
    key = (api_key, api_base)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import stripe

            client = stripe.StripeClient(
                api_key,
                base_addresses={"api": api_base},
                http_client=stripe.RequestsClient(
                    timeout=http_client.TIMEOUT, session=http_client.session()
                ),
                max_network_retries=_RETRIES,
            )
            _clients[key] = client
    return client


@after_restore
def forget_clients() -> None:
    """After a SnapStart restore: each StripeClient is made again, over the new session."""
    with _clients_lock:
        _clients.clear()


def _key_mode(api_key: str) -> bool | None:
    """True for a test key, False for a live key, None when the prefix does not say."""
    if api_key.startswith(("sk_test_", "rk_test_")):
        return True
    if api_key.startswith(("sk_live_", "rk_live_")):
        return False
    return None


class StripeProvider:
    method = "stripe"

    def is_configured(self, secrets: dict[str, str]) -> bool:
        return bool(secrets.get("stripe_secret_key")) and bool(secrets.get("stripe_webhook_secret"))

    def checkout_params(self, request: CheckoutRequest) -> dict[str, Any]:
        """The Checkout Session: one line item priced at exactly pay_money (minor units)."""
        order = {"order_id": request.order_id}
        return {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": request.currency.lower(),
                        "unit_amount": money.to_minor(
                            request.pay_money, request.currency, "stripe"
                        ),
                        "product_data": {"name": request.description or "Top-up"},
                    },
                }
            ],
            "client_reference_id": request.order_id,
            "metadata": order,
            "payment_intent_data": {"metadata": order},
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
        }

    def create_payment(self, request: CheckoutRequest, secrets: dict[str, str]) -> PaymentSession:
        import stripe

        api_key = secrets.get("stripe_secret_key", "")
        mode = _key_mode(api_key)
        if mode is not None and mode != request.test_mode:
            # Test and live never mix: a live key must not serve a test-mode method.
            logger.error("stripe key mode does not match the method's test_mode")
            raise ProviderError("The payment method is misconfigured.")
        try:
            session = _client(api_key).v1.checkout.sessions.create(
                params=self.checkout_params(request),  # type: ignore[arg-type]
                options={"idempotency_key": f"checkout-{request.order_id}"},
            )
        except stripe.StripeError as exc:
            logger.warning(
                "stripe refused the checkout session",
                extra={
                    "order_id": request.order_id,
                    "http_status": exc.http_status,
                    "stripe_code": exc.code,
                    "error_type": type(exc).__name__,
                },
            )
            raise ProviderError() from exc
        if not session.url or not session.id:
            raise ProviderError()
        return PaymentSession(pay_url=str(session.url), session_id=str(session.id))

    def parse_webhook(self, request: WebhookRequest, secrets: dict[str, str]) -> list[PaymentEvent]:
        import stripe

        secret = secrets.get("stripe_webhook_secret", "")
        header = request.headers.get(SIGNATURE_HEADER)
        if not secret or not header:
            raise InvalidSignature("missing signature or secret")
        try:
            # The SDK's check of the header against the raw body (constant-time compare,
            # tolerance); construct_event would also build an SDK Event we do not use, and
            # fails with AttributeError on a signed body that is not a JSON object.
            stripe.WebhookSignature.verify_header(
                request.raw_body, header, secret, tolerance=WEBHOOK_TOLERANCE_SECONDS
            )
        except stripe.SignatureVerificationError as exc:
            raise InvalidSignature("bad stripe signature") from exc
        except ValueError as exc:  # not UTF-8: Stripe never sends that
            raise InvalidSignature("unreadable body") from exc
        # The verified bytes, as plain JSON (no SDK objects downstream).
        return [map_event(verified_object(request.raw_body))]

    def reply(self, accepted: bool, secrets: dict[str, str]) -> WebhookReply:
        return json_ack(accepted, refused_status=400)


def _metadata_order(obj: Mapping[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    return text_or_id(metadata.get("order_id")) if isinstance(metadata, Mapping) else None


_SESSION_EVENTS = {
    "checkout.session.completed": EventType.PAID,
    "checkout.session.async_payment_succeeded": EventType.PAID,
    "checkout.session.async_payment_failed": EventType.FAILED,
    "checkout.session.expired": EventType.EXPIRED,
}


def map_event(event: Mapping[str, Any]) -> PaymentEvent:
    """A verified Stripe event as a PaymentEvent; UnsupportedEvent for anything we ignore."""
    event_id = text_or_id(event.get("id"))
    kind = text_or_id(event.get("type")) or ""
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if event_id is None or not isinstance(obj, Mapping):
        raise UnsupportedEvent(kind or "malformed")
    currency = currency_code(obj.get("currency"))
    payment_intent = text_or_id(obj.get("payment_intent"))
    detail = {"stripe_type": kind}
    if text_or_id(obj.get("id")):
        detail["object_id"] = str(obj.get("id"))

    if kind in _SESSION_EVENTS:
        order_id = _metadata_order(obj) or text_or_id(obj.get("client_reference_id"))
        if order_id is None:
            raise UnsupportedEvent(kind)  # not a session we created
        event_type = _SESSION_EVENTS[kind]
        if kind == "checkout.session.completed" and obj.get("payment_status") != "paid":
            # Delayed methods complete unpaid; async_payment_succeeded/failed follow.
            raise UnsupportedEvent(kind)
        return PaymentEvent(
            provider="stripe",
            event_id=event_id,
            type=event_type,
            order_id=order_id,
            amount=minor_amount(obj.get("amount_total"), currency, "stripe")
            if event_type is EventType.PAID
            else None,
            currency=currency,
            provider_payment_id=payment_intent,
            detail=detail,
        )
    if kind == "charge.refunded":
        if payment_intent is None and _metadata_order(obj) is None:
            raise UnsupportedEvent(kind)
        # amount_refunded is the charge's total refunded so far: events of several partial
        # refunds may arrive in any order and repeated; `refunded` means all of it came back.
        return PaymentEvent(
            provider="stripe",
            event_id=event_id,
            type=EventType.REFUNDED,
            order_id=_metadata_order(obj),
            amount=minor_amount(obj.get("amount_refunded"), currency, "stripe"),
            currency=currency,
            provider_payment_id=payment_intent,
            detail=detail,
            cumulative=True,
            full_refund=obj.get("refunded") is True,
        )
    if kind == "charge.dispute.created":
        if payment_intent is None:
            raise UnsupportedEvent(kind)
        return PaymentEvent(
            provider="stripe",
            event_id=event_id,
            type=EventType.DISPUTED,
            order_id=None,  # a dispute carries no order metadata: matched by payment intent
            amount=minor_amount(obj.get("amount"), currency, "stripe"),
            currency=currency,
            provider_payment_id=payment_intent,
            detail=detail,
        )
    raise UnsupportedEvent(kind)


PROVIDER = StripeProvider()
