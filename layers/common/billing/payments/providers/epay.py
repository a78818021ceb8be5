"""EPay (易支付): aggregated Alipay / WeChat Pay gateways, MD5-signed form fields.

There is no API call at checkout: the user is sent to `{EPAY_API_BASE}/submit.php` with the
signed fields in the query string. The gateway notifies `notify_url` (GET query, or POST form)
with the same kind of signature; only that server-to-server notify is trusted, never the
browser's return to return_url (it carries the same fields but proves nothing about delivery).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from decimal import Decimal
from urllib.parse import parse_qsl, urlencode

from aws_lambda_powertools import Logger

from billing import money
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

logger = Logger(child=True)

API_BASE_ENV = "EPAY_API_BASE"
DEFAULT_CURRENCY = "CNY"  # EPay gateways charge yuan; settings name it explicitly
PAID_STATUS = "TRADE_SUCCESS"
SIGN_TYPE = "MD5"
_UNSIGNED = frozenset({"sign", "sign_type"})
_MAX_BODY = 16 * 1024  # a notify is a dozen short fields


def _api_base() -> str:
    return os.environ.get(API_BASE_ENV, "").strip().rstrip("/")


def sign(params: Mapping[str, str], key: str) -> str:
    """EPay's signature: MD5 over the sorted, non-empty params except sign/sign_type joined as
    `k=v&k=v`, followed directly by the merchant key; lowercase hex."""
    content = "&".join(
        f"{name}={params[name]}"
        for name in sorted(params)
        if name not in _UNSIGNED and params[name] != ""
    )
    # MD5 is EPay's protocol, not our choice; it authenticates (with the key), it is not a hash
    # of secrets at rest.
    return hashlib.md5((content + key).encode("utf-8")).hexdigest()  # noqa: S324


def verify(params: Mapping[str, str], key: str) -> bool:
    received = params.get("sign", "")
    if not key or not received:
        return False
    return hmac.compare_digest(sign(params, key).encode(), received.strip().lower().encode())


def format_money(amount: Decimal) -> str:
    """EPay takes yuan with exactly two decimals."""
    return str(money.quantize(amount, "CNY", "epay"))


def _notify_params(request: WebhookRequest) -> dict[str, str]:
    """The notify's fields: the POST form when there is one, else the GET query."""
    if request.method.upper() == "POST" and request.raw_body:
        if len(request.raw_body) > _MAX_BODY:
            raise InvalidSignature("notify body too large")
        try:
            text = request.raw_body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidSignature("notify body is not UTF-8") from exc
        pairs = parse_qsl(text, keep_blank_values=True)
    else:
        pairs = list(request.query.items())
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            # Two values for one field: which one was signed is ambiguous, so neither is.
            raise InvalidSignature(f"repeated field {name}")
        params[name] = value
    return params


def _currency() -> str:
    from billing.settings import load_settings

    method = load_settings().methods.get("epay")
    return method.currency if method is not None else DEFAULT_CURRENCY


class EpayProvider:
    method = "epay"

    def is_configured(self, secrets: dict[str, str]) -> bool:
        return bool(secrets.get("epay_pid")) and bool(secrets.get("epay_key")) and bool(_api_base())

    def checkout_params(self, request: CheckoutRequest, pid: str, key: str) -> dict[str, str]:
        """The signed form fields of submit.php for exactly pay_money."""
        if not request.channel:
            raise ProviderError("EPay needs a channel (alipay, wxpay, ...).")
        params = {
            "pid": pid,
            "type": request.channel,
            "out_trade_no": request.order_id,
            "notify_url": request.notify_url,
            "return_url": request.success_url,
            "name": request.description or "Top-up",
            "money": format_money(request.pay_money),
        }
        params["sign"] = sign(params, key)
        params["sign_type"] = SIGN_TYPE
        return params

    def create_payment(self, request: CheckoutRequest, secrets: dict[str, str]) -> PaymentSession:
        base = _api_base()
        pid = secrets.get("epay_pid", "")
        key = secrets.get("epay_key", "")
        if not base or not pid or not key:
            logger.error("epay is not configured")
            raise ProviderError("The payment method is misconfigured.")
        if request.currency.upper() != DEFAULT_CURRENCY:
            # `money` is yuan by protocol: any other currency would be charged as yuan.
            logger.error(
                "epay order in a currency other than CNY", extra={"order_id": request.order_id}
            )
            raise ProviderError("The payment method is misconfigured.")
        params = self.checkout_params(request, pid, key)
        return PaymentSession(pay_url=f"{base}/submit.php?{urlencode(params)}")

    def parse_webhook(self, request: WebhookRequest, secrets: dict[str, str]) -> list[PaymentEvent]:
        key = secrets.get("epay_key", "")
        params = _notify_params(request)
        if not verify(params, key):
            raise InvalidSignature("bad or missing epay sign")
        if params.get("sign_type", SIGN_TYPE).upper() != SIGN_TYPE:
            raise InvalidSignature("unsupported sign_type")
        pid = secrets.get("epay_pid", "")
        if params.get("pid", "") != pid:
            raise InvalidSignature("notify for another merchant")
        status = params.get("trade_status", "")
        if status != PAID_STATUS:
            # Gateways notify only successes in practice; anything else changes nothing.
            raise UnsupportedEvent(f"trade_status {status[:40]}")
        order_id = params.get("out_trade_no", "")
        trade_no = params.get("trade_no", "")
        paid = params.get("money", "")
        if not order_id or not trade_no or not paid:
            # Signed but incomplete: refuse so the gateway retries and the refusal is logged,
            # rather than acknowledge a payment we could not record.
            raise InvalidSignature("incomplete notify")
        try:
            amount = money.parse(paid, DEFAULT_CURRENCY)
        except ValueError as exc:
            raise InvalidSignature("unreadable money") from exc
        return [
            PaymentEvent(
                provider=self.method,
                # The gateway has no notification id: what it says (order, trade, status,
                # amount) identifies a notify; a redelivery says the same, anything else differs.
                event_id=f"{order_id}:{trade_no}:{status}:{paid}",
                type=EventType.PAID,
                order_id=order_id,
                amount=amount,
                currency=_currency(),
                provider_payment_id=trade_no,
                detail={"channel": params.get("type", "")[:32]},
            )
        ]

    def reply(self, accepted: bool, secrets: dict[str, str]) -> WebhookReply:
        # EPay reads the body only: exactly `success` stops its retries.
        if accepted:
            return WebhookReply(status=200, body="success", content_type="text/plain")
        return WebhookReply(status=400, body="fail", content_type="text/plain")


PROVIDER = EpayProvider()
