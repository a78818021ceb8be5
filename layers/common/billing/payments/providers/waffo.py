"""Waffo: RSA-signed orders and notifications (RSA-SHA256, PKCS#1 v1.5, base64 in X-SIGNATURE).

We sign the exact bytes we send with the merchant's private key; Waffo signs its responses and
notifications with its platform key, which we verify with Waffo's public key before reading a
single field. Our webhook reply is signed too, as Waffo requires.

Order statuses (Waffo's payment lifecycle):
- `PAY_SUCCESS` credits.
- Final failures fail the order: `ORDER_CLOSE` (cancelled, failed or timed out), and the
  explicit `PAY_FAILED`, `ORDER_FAILED`, `ORDER_EXPIRED`, `ORDER_CANCELLED` some channels report.
- Everything else (`PAY_IN_PROGRESS`, `AUTHORIZATION_REQUIRED`, `AUTHED_WAITING_CAPTURE`, or a
  status we do not know) changes nothing: a payment in progress may still succeed.
Refunds: `REFUND_NOTIFICATION`, one per refund with its own `acquiringRefundOrderId` and
`refundAmount`; `refundStatus` is the order's state after it: `ORDER_PARTIALLY_REFUNDED`
reverses in proportion, `ORDER_FULLY_REFUNDED` reverses what remains; `REFUND_IN_PROGRESS` and
`ORDER_REFUND_FAILED` change nothing (no money came back yet).

`requests` and `cryptography` are imported where used: loading them costs cold-start time.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import os
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from billing import clock, money
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
from billing.payments.providers.payload import currency_code, decimal_amount, verified_object

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

logger = Logger(child=True)

API_BASE_ENV = "WAFFO_API_BASE"
SIGNATURE_HEADER = "x-signature"
SUCCESS_CODE = "0"
PAY_SUCCESS = "PAY_SUCCESS"
FINAL_FAILURES = frozenset(
    {"ORDER_CLOSE", "PAY_FAILED", "ORDER_FAILED", "ORDER_EXPIRED", "ORDER_CANCELLED"}
)
IN_PROGRESS = frozenset({"PAY_IN_PROGRESS", "AUTHORIZATION_REQUIRED", "AUTHED_WAITING_CAPTURE"})
FULLY_REFUNDED = "ORDER_FULLY_REFUNDED"
PARTIALLY_REFUNDED = "ORDER_PARTIALLY_REFUNDED"
REPLY_SUCCESS = '{"message":"success"}'
REPLY_FAILED = '{"message":"failed"}'
_PAYMENT_REQUEST_ID_MAX = 32  # Waffo's idempotency key length
# Connect 3 s, read 8 s: inside the checkout function's 20 s timeout.
_TIMEOUT = (3.05, 8.0)


class _BadKey(Exception):
    """A configured key that is not a usable RSA PEM (never carries the key itself)."""


def _api_base() -> str:
    return os.environ.get(API_BASE_ENV, "").strip().rstrip("/")


@functools.lru_cache(maxsize=8)
def _private_key(pem: str) -> RSAPrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise _BadKey("the merchant private key is not a PEM private key") from exc
    if not isinstance(key, RSAPrivateKey):
        raise _BadKey("the merchant private key is not an RSA key")
    return key


@functools.lru_cache(maxsize=8)
def _public_key(pem: str) -> RSAPublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise _BadKey("the platform public key is not a PEM public key") from exc
    if not isinstance(key, RSAPublicKey):
        raise _BadKey("the platform public key is not an RSA key")
    return key


def sign(data: bytes, private_pem: str) -> str:
    """Base64 RSA-SHA256 (PKCS#1 v1.5) of exactly these bytes."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    raw = _private_key(private_pem).sign(data, padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(raw).decode("ascii")


def verify(data: bytes, signature: str | None, public_pem: str) -> bool:
    """True when `signature` is Waffo's signature of exactly these bytes."""
    if not signature or not public_pem:
        return False
    from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        key = _public_key(public_pem)
    except _BadKey:
        logger.error("waffo platform public key is unusable")
        return False
    try:
        key.verify(raw, data, padding.PKCS1v15(), hashes.SHA256())
    except CryptoInvalidSignature:
        return False
    return True


def format_amount(amount: Decimal, currency: str) -> str:
    """orderAmount: a string with Waffo's decimals of the currency ("10.00"; "1000" for
    JPY and IDR)."""
    return money.format_amount(amount, currency, "waffo")


def payment_request_id(order_id: str) -> str:
    """Waffo's idempotency key (up to 32 characters): the order id, which is stable per order."""
    if len(order_id) <= _PAYMENT_REQUEST_ID_MAX:
        return order_id
    return hashlib.sha256(order_id.encode()).hexdigest()[:_PAYMENT_REQUEST_ID_MAX]


def _str(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


class WaffoProvider:
    method = "waffo"

    def is_configured(self, secrets: dict[str, str]) -> bool:
        return all(
            secrets.get(name)
            for name in ("waffo_api_key", "waffo_merchant_private_key", "waffo_platform_public_key")
        ) and bool(_api_base())

    def order_body(self, request: CheckoutRequest) -> dict[str, Any]:
        return {
            "paymentRequestId": payment_request_id(request.order_id),
            "merchantOrderId": request.order_id,
            "orderCurrency": request.currency.upper(),
            "orderAmount": format_amount(request.pay_money, request.currency),
            "orderDescription": request.description or "Top-up",
            "orderRequestedAt": clock.now()
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "notifyUrl": request.notify_url,
            "successRedirectUrl": request.success_url,
            "failedRedirectUrl": request.cancel_url,
            "cancelRedirectUrl": request.cancel_url,
            "userInfo": {"userId": request.user_id, "userTerminal": "WEB"},
            "paymentInfo": {"productName": "ONE_TIME_PAYMENT"},
        }

    def create_payment(self, request: CheckoutRequest, secrets: dict[str, str]) -> PaymentSession:
        import requests

        base = _api_base()
        api_key = secrets.get("waffo_api_key", "")
        private_pem = secrets.get("waffo_merchant_private_key", "")
        public_pem = secrets.get("waffo_platform_public_key", "")
        if not base or not api_key or not private_pem or not public_pem:
            logger.error("waffo is not configured")
            raise ProviderError("The payment method is misconfigured.")
        # The signature covers these exact bytes, so they are what we send.
        raw = json.dumps(self.order_body(request), separators=(",", ":")).encode("utf-8")
        try:
            signature = sign(raw, private_pem)
        except _BadKey as exc:
            logger.error("waffo merchant private key is unusable")
            raise ProviderError("The payment method is misconfigured.") from exc
        try:
            response = requests.post(
                f"{base}/order/create",
                data=raw,
                headers={
                    "Content-Type": "application/json",
                    "X-API-KEY": api_key,
                    "X-SIGNATURE": signature,
                },
                timeout=_TIMEOUT,
            )
        except requests.RequestException as exc:
            logger.warning(
                "waffo unreachable",
                extra={"order_id": request.order_id, "error_type": type(exc).__name__},
            )
            raise ProviderError() from exc
        # Nothing in an unsigned (or wrongly signed) response is trusted, not even an error.
        if not verify(response.content, response.headers.get("X-SIGNATURE"), public_pem):
            logger.warning(
                "waffo response signature invalid",
                extra={"order_id": request.order_id, "http_status": response.status_code},
            )
            raise ProviderError()
        try:
            reply: Any = response.json()
        except ValueError as exc:
            raise ProviderError() from exc
        if not isinstance(reply, dict) or str(reply.get("code")) != SUCCESS_CODE:
            logger.warning(
                "waffo refused the order",
                extra={
                    "order_id": request.order_id,
                    "http_status": response.status_code,
                    "waffo_code": str(reply.get("code"))[:16] if isinstance(reply, dict) else None,
                },
            )
            raise ProviderError()
        data = reply.get("data")
        pay_url = _pay_url(data.get("orderAction")) if isinstance(data, dict) else None
        if pay_url is None:
            logger.warning(
                "waffo order without a checkout url", extra={"order_id": request.order_id}
            )
            raise ProviderError()
        session_id = _str(data.get("acquiringOrderId")) if isinstance(data, dict) else None
        return PaymentSession(pay_url=pay_url, session_id=session_id)

    def parse_webhook(self, request: WebhookRequest, secrets: dict[str, str]) -> list[PaymentEvent]:
        public_pem = secrets.get("waffo_platform_public_key", "")
        if not verify(request.raw_body, request.headers.get(SIGNATURE_HEADER), public_pem):
            raise InvalidSignature("bad or missing waffo signature")
        return [map_notification(verified_object(request.raw_body))]

    def reply(self, accepted: bool, secrets: dict[str, str]) -> WebhookReply:
        body = REPLY_SUCCESS if accepted else REPLY_FAILED
        headers: dict[str, str] = {}
        private_pem = secrets.get("waffo_merchant_private_key", "")
        try:
            if private_pem:
                headers["X-SIGNATURE"] = sign(body.encode("utf-8"), private_pem)
        except _BadKey:
            # Unsigned, Waffo treats the reply as failed and retries: what we want while the
            # key is being fixed.
            logger.error("waffo merchant private key is unusable; reply left unsigned")
        return WebhookReply(status=200, body=body, headers=headers)


def _pay_url(order_action: Any) -> str | None:
    """The checkout URL from orderAction, a JSON string: webUrl (deeplinkUrl as a fallback)."""
    action: Any = order_action
    if isinstance(order_action, str):
        try:
            action = json.loads(order_action)
        except ValueError:
            return None
    if not isinstance(action, dict):
        return None
    for name in ("webUrl", "deeplinkUrl"):
        url = _str(action.get(name))
        if url is not None and url.startswith(("https://", "http://")):
            return url
    return None


def _result(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The notification's fields: under `result`, or (as some documentation shows) top-level."""
    result = body.get("result")
    return result if isinstance(result, Mapping) else body


def map_notification(body: Mapping[str, Any]) -> PaymentEvent:
    """A verified Waffo notification as a PaymentEvent; UnsupportedEvent when it changes nothing."""
    kind = _str(body.get("eventType")) or ""
    result = _result(body)
    order_id = _str(result.get("merchantOrderId"))
    acquiring_id = _str(result.get("acquiringOrderId"))
    detail = {"waffo_type": kind}

    if kind == "PAYMENT_NOTIFICATION":
        status = _str(result.get("orderStatus")) or ""
        detail["order_status"] = status[:40]
        if order_id is None:
            raise UnsupportedEvent(kind)
        # Waffo sends no notification id: what it says (order, acquiring order, status)
        # identifies one; a redelivery says the same, anything else differs.
        event_id = f"payment:{order_id}:{acquiring_id or ''}:{status}"
        if status == PAY_SUCCESS:
            currency = currency_code(_str(result.get("orderCurrency")))
            raw_amount = _str(result.get("orderAmount"))
            return PaymentEvent(
                provider="waffo",
                event_id=f"{event_id}:{raw_amount}:{currency}",
                type=EventType.PAID,
                order_id=order_id,
                amount=decimal_amount(raw_amount, currency),
                currency=currency,
                provider_payment_id=acquiring_id,
                detail=detail,
            )
        if status in FINAL_FAILURES:
            return PaymentEvent(
                provider="waffo",
                event_id=event_id,
                type=EventType.FAILED,
                order_id=order_id,
                provider_payment_id=acquiring_id,
                detail=detail,
            )
        raise UnsupportedEvent(f"{kind} {status[:40]}")  # in progress or unknown: wait
    if kind == "REFUND_NOTIFICATION":
        status = _str(result.get("refundStatus")) or ""
        detail["refund_status"] = status[:40]
        if status not in (FULLY_REFUNDED, PARTIALLY_REFUNDED):
            raise UnsupportedEvent(f"{kind} {status[:40]}")
        if order_id is None and acquiring_id is None:
            raise UnsupportedEvent(kind)
        # The refund's own id: without one a partial refund cannot be told from a repeat
        # of it, and crediting sends it to the DLQ for an operator rather than guess.
        refund_id = _str(result.get("acquiringRefundOrderId")) or _str(
            result.get("refundRequestId")
        )
        raw_amount = _str(result.get("refundAmount"))
        currency = currency_code(
            _str(result.get("refundCurrency")) or _str(result.get("orderCurrency"))
        )
        return PaymentEvent(
            provider="waffo",
            event_id=(
                f"refund:{order_id or ''}:{acquiring_id or ''}:{refund_id or ''}:{status}"
                f":{raw_amount or ''}"
            ),
            type=EventType.REFUNDED,
            order_id=order_id,
            amount=decimal_amount(raw_amount, currency),
            currency=currency,
            provider_payment_id=acquiring_id,
            detail=detail,
            full_refund=status == FULLY_REFUNDED,
            refund_id=refund_id,
        )
    raise UnsupportedEvent(kind)


PROVIDER = WaffoProvider()
