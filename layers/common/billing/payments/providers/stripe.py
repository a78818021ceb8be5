"""Stripe: Checkout Sessions for exactly pay_money, and signed webhooks (official SDK).

The SDK is imported inside the functions that need it: it is large, and only the handlers that
actually talk to Stripe should pay for importing it on a cold start.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from billing import money
from billing.errors import ProviderError
from billing.payments import AutoCharge
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
        params: dict[str, Any] = {
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
        if request.customer_id:
            # Save the card for off-session payments (auto top-up) on the user's customer.
            params["customer"] = request.customer_id
            params["payment_intent_data"] = {
                "metadata": order,
                "setup_future_usage": "off_session",
            }
        return params

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

    def _checked_key(self, secrets: dict[str, str], test_mode: bool = True) -> str:
        api_key = secrets.get("stripe_secret_key", "")
        mode = _key_mode(api_key)
        if mode is not None and mode != test_mode:
            logger.error("stripe key mode does not match the method's test_mode")
            raise ProviderError("The payment method is misconfigured.")
        return api_key

    def create_customer(self, user_id: str, secrets: dict[str, str]) -> str:
        """A customer for the user (one per user: the idempotency key names the user)."""
        import stripe

        try:
            customer = _client(self._checked_key(secrets)).v1.customers.create(
                params={"metadata": {"user_id": user_id}},
                options={"idempotency_key": f"customer-{user_id}"},
            )
        except stripe.StripeError as exc:
            logger.warning("stripe refused the customer", extra={"stripe_code": exc.code})
            raise ProviderError() from exc
        if not customer.id:
            raise ProviderError()
        return str(customer.id)

    def _cards(self, customer_id: str, secrets: dict[str, str]) -> list[Any]:
        listed = _client(self._checked_key(secrets)).v1.payment_methods.list(
            params={"customer": customer_id, "type": "card", "limit": 1}
        )
        return list(listed.data)

    def saved_card(self, customer_id: str, secrets: dict[str, str]) -> dict[str, Any] | None:
        """The customer's newest saved card ({"id", "brand", "last4"}), or None."""
        import stripe

        try:
            cards = self._cards(customer_id, secrets)
        except stripe.StripeError as exc:
            logger.warning("stripe refused the card list", extra={"stripe_code": exc.code})
            raise ProviderError() from exc
        if not cards:
            return None
        method = cards[0].to_dict()  # SDK objects are not dicts
        card = method.get("card") or {}
        return {"id": str(method["id"]), "brand": card.get("brand"), "last4": card.get("last4")}

    def charge_off_session(
        self,
        *,
        customer_id: str,
        order_id: str,
        pay_money: Decimal,
        currency: str,
        description: str,
        test_mode: bool,
        secrets: dict[str, str],
    ) -> AutoCharge:
        """One off-session PaymentIntent for exactly pay_money on the saved card (idempotency
        key per order). A decline or a card that needs the customer (authentication) is a
        refusal; a transport error or a Stripe outage raises (the caller retries)."""
        import stripe

        card = self.saved_card(customer_id, secrets)
        if card is None:
            return AutoCharge(False, "no_saved_card", "No card is saved for off-session payments.")
        order = {"order_id": order_id, "auto": "true"}
        try:
            intent = _client(self._checked_key(secrets, test_mode)).v1.payment_intents.create(
                params={
                    "amount": money.to_minor(pay_money, currency, "stripe"),
                    "currency": currency.lower(),
                    "customer": customer_id,
                    "payment_method": card["id"],
                    "off_session": True,
                    "confirm": True,
                    "description": description,
                    "metadata": order,
                },
                options={"idempotency_key": f"auto-{order_id}"},
            )
        except stripe.CardError as exc:
            code = str(exc.code or "card_declined")
            if code == "authentication_required":
                code = "requires_action"
            return AutoCharge(False, code, exc.user_message or "The card was declined.")
        except stripe.StripeError as exc:
            if (
                exc.http_status is not None
                and 400 <= exc.http_status < 500
                and exc.http_status != 429
            ):
                logger.warning(
                    "stripe refused the off-session payment",
                    extra={"order_id": order_id, "stripe_code": exc.code},
                )
                return AutoCharge(False, str(exc.code or "provider_refused"), "Stripe refused it.")
            raise
        status = str(intent.status)
        if status in ("succeeded", "processing"):
            return AutoCharge(True, provider_payment_id=str(intent.id))
        if status == "requires_action":
            return AutoCharge(False, "requires_action", "The card needs the customer to confirm.")
        return AutoCharge(False, "card_declined", "The card was declined.")

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


# Off-session payments (auto top-up) have no session: their intent's events say it.
_INTENT_EVENTS = {
    "payment_intent.succeeded": EventType.PAID,
    "payment_intent.payment_failed": EventType.FAILED,
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
    if kind in _INTENT_EVENTS:
        order_id = _metadata_order(obj)
        metadata = obj.get("metadata")
        auto = isinstance(metadata, Mapping) and metadata.get("auto") == "true"
        if order_id is None or not auto:
            # A Checkout Session's intent: its session events say what happened (a failed
            # attempt inside an open session must not fail the order).
            raise UnsupportedEvent(kind)
        event_type = _INTENT_EVENTS[kind]
        return PaymentEvent(
            provider="stripe",
            event_id=event_id,
            type=event_type,
            order_id=order_id,
            amount=minor_amount(obj.get("amount_received"), currency, "stripe")
            if event_type is EventType.PAID
            else None,
            currency=currency,
            provider_payment_id=text_or_id(obj.get("id")),
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
