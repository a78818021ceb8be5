"""EPay, Creem and Waffo signatures and event parsing, against vectors computed in the test.

EPay and Creem vectors follow the documented formulas (PROVIDERS.md), written out here with
hashlib/hmac; Waffo uses RSA key pairs generated here. Checkout creation talks to a tiny HTTP
server in the test that checks what the provider module sends, as the real API would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from billing.errors import ProviderError
from billing.payments.providers import get_provider
from billing.payments.providers.base import (
    CheckoutRequest,
    EventType,
    InvalidSignature,
    PaymentEvent,
    UnsupportedEvent,
    WebhookRequest,
)
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ROOT = Path(__file__).resolve().parents[2]

EPAY_KEY = "k3y-for-tests"
EPAY_PID = "1001"
CREEM_SECRET = "whsec_test_creem"
CREEM_KEY = "creem_test_abc"


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SETTINGS_FILE", str(ROOT / "settings" / "local.json"))


def checkout_request(**changes: Any) -> CheckoutRequest:
    values: dict[str, Any] = {
        "order_id": "ord_TestOrder0000000000000001",
        "user_id": "user-1",
        "method": "epay",
        "amount": 10,
        "pay_money": Decimal("73.00"),
        "currency": "CNY",
        "quota": 5_000_000,
        "description": "Top-up: 10 units",
        "success_url": "https://console.example/console/topup?order=ord_1",
        "cancel_url": "https://console.example/console/topup?order=ord_1&cancelled=1",
        "notify_url": "https://api.example/webhooks/epay",
        "channel": "alipay",
    }
    values.update(changes)
    return CheckoutRequest(**values)


def webhook(
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    query: dict[str, str] | None = None,
) -> WebhookRequest:
    return WebhookRequest(method=method, headers=headers or {}, raw_body=body, query=query or {})


# ---------------------------------------------------------------- EPay


def epay_sign_by_hand(params: dict[str, str], key: str) -> str:
    """The documented formula, written out: sorted, non-empty, no sign/sign_type, key appended."""
    kept = sorted(
        (name, value)
        for name, value in params.items()
        if name not in ("sign", "sign_type") and value != ""
    )
    text = "&".join(f"{name}={value}" for name, value in kept) + key
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def epay_notify(key: str = EPAY_KEY, **changes: str) -> dict[str, str]:
    params = {
        "pid": EPAY_PID,
        "trade_no": "2026112701234567",
        "out_trade_no": "ord_TestOrder0000000000000001",
        "type": "alipay",
        "name": "Top-up: 10 units",
        "money": "73.00",
        "trade_status": "TRADE_SUCCESS",
        "param": "",
    }
    params.update(changes)
    params["sign"] = epay_sign_by_hand(params, key)
    params["sign_type"] = "MD5"
    return params


EPAY_SECRETS = {"epay_pid": EPAY_PID, "epay_key": EPAY_KEY}


def test_epay_sign_matches_a_fixed_vector() -> None:
    from billing.payments.providers import epay

    params = {"pid": "1001", "type": "alipay", "money": "1.00", "name": "", "sign": "x"}
    # money=1.00&pid=1001&type=alipay + key: the empty name and the sign are left out
    expected = hashlib.md5(b"money=1.00&pid=1001&type=alipayk3y-for-tests").hexdigest()
    assert epay.sign(params, EPAY_KEY) == expected
    assert epay.sign(params, "other") != expected


def test_epay_pay_url_carries_exactly_the_signed_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPAY_API_BASE", "https://pay.example/")
    session = get_provider("epay").create_payment(checkout_request(), EPAY_SECRETS)
    parts = urlsplit(session.pay_url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://pay.example/submit.php"
    fields = dict(parse_qsl(parts.query, keep_blank_values=True))
    assert fields["pid"] == EPAY_PID
    assert fields["type"] == "alipay"
    assert fields["out_trade_no"] == "ord_TestOrder0000000000000001"
    assert fields["notify_url"] == "https://api.example/webhooks/epay"
    assert fields["return_url"] == "https://console.example/console/topup?order=ord_1"
    assert fields["money"] == "73.00"
    assert fields["sign_type"] == "MD5"
    assert fields["sign"] == epay_sign_by_hand(fields, EPAY_KEY)


def test_epay_money_always_has_two_decimals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPAY_API_BASE", "https://pay.example")
    session = get_provider("epay").create_payment(
        checkout_request(pay_money=Decimal("7.3")), EPAY_SECRETS
    )
    assert dict(parse_qsl(urlsplit(session.pay_url).query))["money"] == "7.30"


def test_epay_refuses_a_non_cny_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPAY_API_BASE", "https://pay.example")
    with pytest.raises(ProviderError):
        get_provider("epay").create_payment(checkout_request(currency="USD"), EPAY_SECRETS)


def test_epay_valid_get_notify_is_paid() -> None:
    events = get_provider("epay").parse_webhook(
        webhook(method="GET", query=epay_notify()), EPAY_SECRETS
    )
    assert len(events) == 1
    event = events[0]
    assert event.type is EventType.PAID
    assert event.provider == "epay"
    assert event.order_id == "ord_TestOrder0000000000000001"
    assert event.amount == Decimal("73.00")
    assert event.currency == "CNY"  # settings' epay currency
    assert event.provider_payment_id == "2026112701234567"
    assert "2026112701234567" in event.event_id and "TRADE_SUCCESS" in event.event_id
    # it survives the credit queue unchanged
    assert PaymentEvent.from_message(event.to_message()) == event


def test_epay_valid_post_form_notify_is_paid() -> None:
    body = urlencode(epay_notify()).encode()
    events = get_provider("epay").parse_webhook(
        webhook(body, {"content-type": "application/x-www-form-urlencoded"}), EPAY_SECRETS
    )
    assert events[0].type is EventType.PAID and events[0].amount == Decimal("73.00")


def test_epay_redelivery_has_the_same_event_id() -> None:
    provider = get_provider("epay")
    first = provider.parse_webhook(webhook(method="GET", query=epay_notify()), EPAY_SECRETS)
    second = provider.parse_webhook(webhook(urlencode(epay_notify()).encode()), EPAY_SECRETS)
    assert first[0].event_id == second[0].event_id


def test_epay_notify_for_another_order_never_shares_an_event_id() -> None:
    """The event id is the queue's deduplication id: a notify naming another order (or amount)
    under the same trade number must not make the genuine one look like a duplicate."""
    provider = get_provider("epay")
    ids = {
        provider.parse_webhook(webhook(method="GET", query=params), EPAY_SECRETS)[0].event_id
        for params in (
            epay_notify(),
            epay_notify(out_trade_no="ord_Other"),
            epay_notify(money="0.01"),
        )
    }
    assert len(ids) == 3


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda p: p.update(money="0.01"), id="amount"),
        pytest.param(lambda p: p.update(out_trade_no="ord_Other"), id="order"),
        pytest.param(lambda p: p.update(sign=p["sign"][:-1] + "0"), id="sign"),
        pytest.param(lambda p: p.pop("sign"), id="missing-sign"),
        pytest.param(lambda p: p.update(sign=""), id="empty-sign"),
        pytest.param(lambda p: p.update(param="added"), id="added-field"),
    ],
)
def test_epay_tampered_notify_is_refused(tamper: Callable[[dict[str, str]], Any]) -> None:
    params = epay_notify()
    tamper(params)
    with pytest.raises(InvalidSignature):
        get_provider("epay").parse_webhook(webhook(method="GET", query=params), EPAY_SECRETS)


def test_epay_notify_signed_with_another_key_is_refused() -> None:
    with pytest.raises(InvalidSignature):
        get_provider("epay").parse_webhook(
            webhook(method="GET", query=epay_notify(key="not-our-key")), EPAY_SECRETS
        )


def test_epay_notify_for_another_merchant_is_refused() -> None:
    with pytest.raises(InvalidSignature):
        get_provider("epay").parse_webhook(
            webhook(method="GET", query=epay_notify(pid="2002")), EPAY_SECRETS
        )


def test_epay_without_a_key_refuses_everything() -> None:
    with pytest.raises(InvalidSignature):
        get_provider("epay").parse_webhook(
            webhook(method="GET", query=epay_notify(key="")), {"epay_pid": EPAY_PID, "epay_key": ""}
        )


def test_epay_repeated_field_is_refused() -> None:
    body = (urlencode(epay_notify()) + "&money=0.01").encode()
    with pytest.raises(InvalidSignature):
        get_provider("epay").parse_webhook(webhook(body), EPAY_SECRETS)


def test_epay_other_status_changes_nothing() -> None:
    with pytest.raises(UnsupportedEvent):
        get_provider("epay").parse_webhook(
            webhook(method="GET", query=epay_notify(trade_status="WAIT_BUYER_PAY")), EPAY_SECRETS
        )


def test_epay_replies_plain_success_or_fail() -> None:
    provider = get_provider("epay")
    accepted = provider.reply(True, EPAY_SECRETS)
    refused = provider.reply(False, EPAY_SECRETS)
    assert (accepted.status, accepted.body, accepted.content_type) == (200, "success", "text/plain")
    assert refused.body == "fail" and refused.content_type == "text/plain"


def test_epay_is_configured_only_with_pid_key_and_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = get_provider("epay")
    monkeypatch.setenv("EPAY_API_BASE", "https://pay.example")
    assert provider.is_configured(EPAY_SECRETS)
    assert not provider.is_configured({**EPAY_SECRETS, "epay_key": ""})
    assert not provider.is_configured({"epay_key": EPAY_KEY})
    monkeypatch.setenv("EPAY_API_BASE", "")
    assert not provider.is_configured(EPAY_SECRETS)


# ---------------------------------------------------------------- Creem


CREEM_SECRETS = {"creem_api_key": CREEM_KEY, "creem_webhook_secret": CREEM_SECRET}


def creem_sign_by_hand(raw: bytes, secret: str = CREEM_SECRET) -> str:
    return hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def creem_event(kind: str = "checkout.completed", **order_changes: Any) -> dict[str, Any]:
    order = {
        "id": "ord_creem_1",
        "product": "prod_starter",
        "amount": 999,
        "currency": "USD",
        "status": "paid",
        "type": "onetime",
    }
    order.update(order_changes)
    if kind == "refund.created":
        obj: dict[str, Any] = {
            "id": "ref_1",
            "object": "refund",
            "status": "succeeded",
            "refund_amount": 999,
            "refund_currency": "USD",
            "order": order,
            "checkout": {"id": "ch_1", "request_id": "ord_TestOrder0000000000000001"},
        }
    else:
        obj = {
            "id": "ch_1",
            "object": "checkout",
            "request_id": "ord_TestOrder0000000000000001",
            "order": order,
            "metadata": {"order_id": "ord_TestOrder0000000000000001", "user_id": "user-1"},
            "status": "completed",
        }
    return {"id": "evt_1", "eventType": kind, "created_at": 1764208155000, "object": obj}


def creem_webhook(event: dict[str, Any], signature: str | None = "auto") -> WebhookRequest:
    raw = json.dumps(event).encode()
    headers = {"content-type": "application/json"}
    if signature == "auto":
        headers["creem-signature"] = creem_sign_by_hand(raw)
    elif signature is not None:
        headers["creem-signature"] = signature
    return webhook(raw, headers)


def test_creem_signature_matches_a_fixed_vector() -> None:
    from billing.payments.providers import creem

    raw = b'{"id":"evt_1"}'
    expected = hmac.new(b"whsec_test_creem", raw, hashlib.sha256).hexdigest()
    assert creem.signature(raw, CREEM_SECRET) == expected


def test_creem_paid_checkout() -> None:
    [event] = get_provider("creem").parse_webhook(creem_webhook(creem_event()), CREEM_SECRETS)
    assert event.type is EventType.PAID
    assert event.provider == "creem" and event.event_id == "evt_1"
    assert event.order_id == "ord_TestOrder0000000000000001"
    assert event.amount == Decimal("9.99") and event.currency == "USD"
    assert event.provider_payment_id == "ord_creem_1"
    assert PaymentEvent.from_message(event.to_message()) == event


def test_creem_zero_decimal_amount_is_major_units() -> None:
    [event] = get_provider("creem").parse_webhook(
        creem_webhook(creem_event(amount=1500, currency="jpy")), CREEM_SECRETS
    )
    assert event.amount == Decimal(1500) and event.currency == "JPY"


def test_creem_tampered_body_is_refused() -> None:
    event = creem_event()
    raw = json.dumps(event).encode()
    signature = creem_sign_by_hand(raw)
    event["object"]["order"]["amount"] = 1
    with pytest.raises(InvalidSignature):
        get_provider("creem").parse_webhook(creem_webhook(event, signature), CREEM_SECRETS)


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("zz", id="garbage"),
    ],
)
def test_creem_bad_or_missing_signature_is_refused(signature: str | None) -> None:
    with pytest.raises(InvalidSignature):
        get_provider("creem").parse_webhook(creem_webhook(creem_event(), signature), CREEM_SECRETS)


def test_creem_wrong_secret_is_refused() -> None:
    raw = json.dumps(creem_event()).encode()
    other = creem_sign_by_hand(raw, "whsec_someone_else")
    with pytest.raises(InvalidSignature):
        get_provider("creem").parse_webhook(webhook(raw, {"creem-signature": other}), CREEM_SECRETS)


def test_creem_refund_created_is_refunded() -> None:
    [event] = get_provider("creem").parse_webhook(
        creem_webhook(creem_event("refund.created")), CREEM_SECRETS
    )
    assert event.type is EventType.REFUNDED
    assert event.order_id == "ord_TestOrder0000000000000001"
    assert event.provider_payment_id == "ord_creem_1"
    assert event.amount == Decimal("9.99") and event.currency == "USD"
    assert event.full_refund and not event.cumulative and event.refund_id


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(creem_event(status="pending"), id="unpaid"),
        pytest.param(creem_event(type="recurring"), id="subscription"),
        pytest.param(creem_event("subscription.paid"), id="other-type"),
    ],
)
def test_creem_events_we_do_not_act_on(event: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedEvent):
        get_provider("creem").parse_webhook(creem_webhook(event), CREEM_SECRETS)


@pytest.mark.parametrize("raw", [b"\xff\xfe not json", b"[]", b"42"])
def test_creem_signed_body_that_is_not_a_json_object_is_refused(raw: bytes) -> None:
    request = webhook(raw, {"creem-signature": creem_sign_by_hand(raw)})
    with pytest.raises(InvalidSignature):
        get_provider("creem").parse_webhook(request, CREEM_SECRETS)


def test_creem_replies() -> None:
    provider = get_provider("creem")
    assert provider.reply(True, CREEM_SECRETS).status == 200
    refused = provider.reply(False, CREEM_SECRETS)
    assert refused.status == 401
    assert json.loads(refused.body)["error"]["code"] == "invalid_signature"


# ---------------------------------------------------------------- a fake provider API


@dataclass
class Captured:
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


Responder = Callable[[Captured], tuple[int, dict[str, str], bytes]]


@dataclass
class FakeApi:
    url: str
    calls: list[Captured]
    respond: list[Responder]


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    calls: list[Captured] = []
    respond: list[Responder] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            captured = Captured(
                self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length)
            )
            calls.append(captured)
            status, headers, body = respond[0](captured)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeApi(f"http://127.0.0.1:{server.server_address[1]}", calls, respond)
    finally:
        server.shutdown()
        server.server_close()


def test_creem_checkout_request(fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREEM_API_BASE", fake_api.url)
    reply = {"id": "ch_42", "checkout_url": "https://checkout.example/ch_42"}
    fake_api.respond.append(
        lambda _c: (200, {"content-type": "application/json"}, json.dumps(reply).encode())
    )
    request = checkout_request(
        method="creem",
        amount=0,
        pay_money=Decimal("9.99"),
        currency="USD",
        channel=None,
        product_id="prod_starter",
    )
    session = get_provider("creem").create_payment(request, CREEM_SECRETS)
    assert session.pay_url == "https://checkout.example/ch_42"
    assert session.session_id == "ch_42"
    [call] = fake_api.calls
    assert call.path == "/v1/checkouts"
    assert call.headers["x-api-key"] == CREEM_KEY
    sent = json.loads(call.body)
    assert sent == {
        "product_id": "prod_starter",
        "request_id": request.order_id,
        "metadata": {"order_id": request.order_id, "user_id": "user-1"},
        "success_url": request.success_url,
    }


def test_creem_refusal_is_a_provider_error(
    fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREEM_API_BASE", fake_api.url)
    fake_api.respond.append(lambda _c: (403, {}, b'{"message":"Forbidden"}'))
    request = checkout_request(method="creem", currency="USD", product_id="prod_starter")
    with pytest.raises(ProviderError):
        get_provider("creem").create_payment(request, CREEM_SECRETS)


def test_creem_live_key_never_serves_a_test_mode_method(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREEM_API_BASE", "http://127.0.0.1:9")
    request = checkout_request(method="creem", currency="USD", product_id="prod_starter")
    with pytest.raises(ProviderError):
        get_provider("creem").create_payment(
            request, {**CREEM_SECRETS, "creem_api_key": "creem_live_key"}
        )


# ---------------------------------------------------------------- Waffo


@dataclass(frozen=True)
class KeyPair:
    private: rsa.RSAPrivateKey
    private_pem: str
    public_pem: str

    def sign(self, data: bytes) -> str:
        raw = self.private.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(raw).decode()

    def verifies(self, data: bytes, signature: str) -> bool:
        try:
            self.private.public_key().verify(
                base64.b64decode(signature), data, padding.PKCS1v15(), hashes.SHA256()
            )
        except Exception:
            return False
        return True


def new_pair() -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyPair(
        key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
    )


@pytest.fixture(scope="module")
def merchant() -> KeyPair:
    return new_pair()


@pytest.fixture(scope="module")
def platform() -> KeyPair:
    return new_pair()


@pytest.fixture
def waffo_secrets(merchant: KeyPair, platform: KeyPair) -> dict[str, str]:
    return {
        "waffo_api_key": "waffo_test_key",
        "waffo_merchant_private_key": merchant.private_pem,
        "waffo_platform_public_key": platform.public_pem,
    }


def waffo_payment(status: str = "PAY_SUCCESS", **changes: Any) -> dict[str, Any]:
    result = {
        "acquiringOrderId": "ACQ123456",
        "merchantOrderId": "ord_TestOrder0000000000000001",
        "paymentRequestId": "ord_TestOrder0000000000000001",
        "orderStatus": status,
        "orderAmount": "10.00",
        "orderCurrency": "USD",
    }
    result.update(changes)
    return {"eventType": "PAYMENT_NOTIFICATION", "result": result}


def waffo_webhook(body: dict[str, Any], signer: KeyPair | None) -> WebhookRequest:
    raw = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if signer is not None:
        headers["x-signature"] = signer.sign(raw)
    return webhook(raw, headers)


def test_waffo_paid_notification(platform: KeyPair, waffo_secrets: dict[str, str]) -> None:
    [event] = get_provider("waffo").parse_webhook(
        waffo_webhook(waffo_payment(), platform), waffo_secrets
    )
    assert event.type is EventType.PAID and event.provider == "waffo"
    assert event.order_id == "ord_TestOrder0000000000000001"
    assert event.amount == Decimal("10.00") and event.currency == "USD"
    assert event.provider_payment_id == "ACQ123456"
    assert PaymentEvent.from_message(event.to_message()) == event


def test_waffo_notifications_for_other_orders_never_share_an_event_id(
    platform: KeyPair, waffo_secrets: dict[str, str]
) -> None:
    provider = get_provider("waffo")
    ids = {
        provider.parse_webhook(waffo_webhook(body, platform), waffo_secrets)[0].event_id
        for body in (
            waffo_payment(),
            waffo_payment(merchantOrderId="ord_Other"),
            waffo_payment(orderAmount="0.01"),
            waffo_payment("ORDER_CLOSE"),
        )
    }
    assert len(ids) == 4


def test_waffo_flat_notification_is_read_too(
    platform: KeyPair, waffo_secrets: dict[str, str]
) -> None:
    body = waffo_payment()
    flat = {"eventType": body["eventType"], **body["result"]}
    [event] = get_provider("waffo").parse_webhook(waffo_webhook(flat, platform), waffo_secrets)
    assert event.type is EventType.PAID and event.amount == Decimal("10.00")


@pytest.mark.parametrize("amount", ["ten", "", "NaN", None])
def test_waffo_unreadable_amount_reaches_crediting_as_no_amount(
    platform: KeyPair, waffo_secrets: dict[str, str], amount: str | None
) -> None:
    # Signed but unreadable: no amount, so crediting disputes the order instead of crediting.
    [event] = get_provider("waffo").parse_webhook(
        waffo_webhook(waffo_payment(orderAmount=amount, orderCurrency="usd"), platform),
        waffo_secrets,
    )
    assert event.type is EventType.PAID and event.amount is None and event.currency == "USD"


def test_waffo_tampered_amount_is_refused(platform: KeyPair, waffo_secrets: dict[str, str]) -> None:
    raw = json.dumps(waffo_payment()).encode()
    signature = platform.sign(raw)
    tampered = raw.replace(b'"10.00"', b'"1000.00"')
    assert tampered != raw
    with pytest.raises(InvalidSignature):
        get_provider("waffo").parse_webhook(
            webhook(tampered, {"x-signature": signature}), waffo_secrets
        )


@pytest.mark.parametrize("raw", [b"\xff\xfe not json", b"[]", b"null"])
def test_waffo_signed_body_that_is_not_a_json_object_is_refused(
    raw: bytes, platform: KeyPair, waffo_secrets: dict[str, str]
) -> None:
    request = webhook(raw, {"x-signature": platform.sign(raw)})
    with pytest.raises(InvalidSignature):
        get_provider("waffo").parse_webhook(request, waffo_secrets)


def test_waffo_wrong_key_is_refused(merchant: KeyPair, waffo_secrets: dict[str, str]) -> None:
    # Signed, but by the merchant key rather than Waffo's.
    with pytest.raises(InvalidSignature):
        get_provider("waffo").parse_webhook(waffo_webhook(waffo_payment(), merchant), waffo_secrets)


@pytest.mark.parametrize("signature", [None, "", "not base64!", base64.b64encode(b"x").decode()])
def test_waffo_missing_or_garbage_signature_is_refused(
    signature: str | None, waffo_secrets: dict[str, str]
) -> None:
    headers = {} if signature is None else {"x-signature": signature}
    with pytest.raises(InvalidSignature):
        get_provider("waffo").parse_webhook(
            webhook(json.dumps(waffo_payment()).encode(), headers), waffo_secrets
        )


@pytest.mark.parametrize("status", ["ORDER_CLOSE", "PAY_FAILED", "ORDER_EXPIRED"])
def test_waffo_final_failure_fails_the_order(
    status: str, platform: KeyPair, waffo_secrets: dict[str, str]
) -> None:
    [event] = get_provider("waffo").parse_webhook(
        waffo_webhook(waffo_payment(status), platform), waffo_secrets
    )
    assert event.type is EventType.FAILED
    assert event.order_id == "ord_TestOrder0000000000000001"


@pytest.mark.parametrize(
    "status", ["PAY_IN_PROGRESS", "AUTHORIZATION_REQUIRED", "AUTHED_WAITING_CAPTURE", "NEW_ONE"]
)
def test_waffo_in_progress_changes_nothing(
    status: str, platform: KeyPair, waffo_secrets: dict[str, str]
) -> None:
    with pytest.raises(UnsupportedEvent):
        get_provider("waffo").parse_webhook(
            waffo_webhook(waffo_payment(status), platform), waffo_secrets
        )


def waffo_refund(status: str = "ORDER_FULLY_REFUNDED") -> dict[str, Any]:
    return {
        "eventType": "REFUND_NOTIFICATION",
        "result": {
            "acquiringRefundOrderId": "REF1",
            "refundRequestId": "RR1",
            "acquiringOrderId": "ACQ123456",
            "merchantOrderId": "ord_TestOrder0000000000000001",
            "refundStatus": status,
            "refundAmount": "10.00",
            "orderCurrency": "USD",
        },
    }


def test_waffo_full_refund(platform: KeyPair, waffo_secrets: dict[str, str]) -> None:
    [event] = get_provider("waffo").parse_webhook(
        waffo_webhook(waffo_refund(), platform), waffo_secrets
    )
    assert event.type is EventType.REFUNDED
    assert event.order_id == "ord_TestOrder0000000000000001"
    assert event.provider_payment_id == "ACQ123456"
    assert event.amount == Decimal("10.00") and event.currency == "USD"


def test_waffo_partial_refund_is_this_refund_with_its_own_id(
    platform: KeyPair, waffo_secrets: dict[str, str]
) -> None:
    body = waffo_refund("ORDER_PARTIALLY_REFUNDED")
    body["result"].update(refundAmount="2.50", acquiringRefundOrderId="RF1")
    [event] = get_provider("waffo").parse_webhook(waffo_webhook(body, platform), waffo_secrets)
    assert event.type is EventType.REFUNDED and event.amount == Decimal("2.50")
    assert (event.refund_id, event.full_refund, event.cumulative) == ("RF1", False, False)
    body["result"].update(acquiringRefundOrderId="RF2")
    [other] = get_provider("waffo").parse_webhook(waffo_webhook(body, platform), waffo_secrets)
    assert other.event_id != event.event_id  # another refund of the same amount


@pytest.mark.parametrize("status", ["REFUND_IN_PROGRESS", "ORDER_REFUND_FAILED"])
def test_waffo_other_refund_states_change_nothing(
    status: str, platform: KeyPair, waffo_secrets: dict[str, str]
) -> None:
    with pytest.raises(UnsupportedEvent):
        get_provider("waffo").parse_webhook(
            waffo_webhook(waffo_refund(status), platform), waffo_secrets
        )


def test_waffo_reply_is_signed_with_the_merchant_key(
    merchant: KeyPair, platform: KeyPair, waffo_secrets: dict[str, str]
) -> None:
    provider = get_provider("waffo")
    for accepted, body in ((True, '{"message":"success"}'), (False, '{"message":"failed"}')):
        reply = provider.reply(accepted, waffo_secrets)
        assert reply.status == 200 and reply.body == body
        assert merchant.verifies(body.encode(), reply.headers["X-SIGNATURE"])
        assert not platform.verifies(body.encode(), reply.headers["X-SIGNATURE"])


@pytest.mark.parametrize(
    ("currency", "amount", "expected"),
    [
        ("USD", Decimal("10"), "10.00"),
        ("USD", Decimal("9.5"), "9.50"),
        ("JPY", Decimal("1500"), "1500"),
        ("KRW", Decimal("13000"), "13000"),
        ("IDR", Decimal("150000"), "150000"),
        ("VND", Decimal("250000"), "250000"),
    ],
)
def test_waffo_order_amount_has_the_currency_decimals(
    currency: str, amount: Decimal, expected: str
) -> None:
    from billing.payments.providers import waffo

    assert waffo.format_amount(amount, currency) == expected


def waffo_response(
    platform: KeyPair, payload: dict[str, Any], *, signer: KeyPair | None = None
) -> tuple[int, dict[str, str], bytes]:
    raw = json.dumps(payload).encode()
    headers = {"content-type": "application/json"}
    headers["X-SIGNATURE"] = (signer or platform).sign(raw)
    return 200, headers, raw


def test_waffo_order_create_is_signed_and_its_response_verified(
    fake_api: FakeApi,
    monkeypatch: pytest.MonkeyPatch,
    merchant: KeyPair,
    platform: KeyPair,
    waffo_secrets: dict[str, str],
) -> None:
    monkeypatch.setenv("WAFFO_API_BASE", fake_api.url + "/api/v1")
    action = {"actionType": "WEB", "webUrl": "https://cashier.example/pay/ACQ1"}
    payload = {
        "code": "0",
        "msg": "Success",
        "data": {"acquiringOrderId": "ACQ1", "orderAction": json.dumps(action)},
    }
    fake_api.respond.append(lambda _c: waffo_response(platform, payload))
    request = checkout_request(
        method="waffo",
        pay_money=Decimal("10.00"),
        currency="USD",
        channel=None,
        notify_url="https://api.example/webhooks/waffo",
    )
    session = get_provider("waffo").create_payment(request, waffo_secrets)
    assert session.pay_url == "https://cashier.example/pay/ACQ1"
    assert session.session_id == "ACQ1"

    [call] = fake_api.calls
    assert call.path == "/api/v1/order/create"
    assert call.headers["x-api-key"] == "waffo_test_key"
    # the signature covers the exact bytes sent, with the merchant's key
    assert merchant.verifies(call.body, call.headers["x-signature"])
    sent = json.loads(call.body)
    assert sent["merchantOrderId"] == request.order_id
    assert sent["paymentRequestId"] and len(sent["paymentRequestId"]) <= 32
    assert sent["orderAmount"] == "10.00" and sent["orderCurrency"] == "USD"
    assert sent["notifyUrl"] == "https://api.example/webhooks/waffo"
    assert sent["successRedirectUrl"] == request.success_url
    assert sent["failedRedirectUrl"] == request.cancel_url
    assert sent["userInfo"]["userId"] == "user-1"
    assert sent["paymentInfo"]


def test_waffo_jpy_order_amount_has_no_decimals(
    fake_api: FakeApi,
    monkeypatch: pytest.MonkeyPatch,
    platform: KeyPair,
    waffo_secrets: dict[str, str],
) -> None:
    monkeypatch.setenv("WAFFO_API_BASE", fake_api.url)
    action = {"actionType": "WEB", "webUrl": "https://cashier.example/pay/ACQ2"}
    payload = {"code": "0", "data": {"orderAction": json.dumps(action)}}
    fake_api.respond.append(lambda _c: waffo_response(platform, payload))
    request = checkout_request(method="waffo", pay_money=Decimal("1500"), currency="JPY")
    get_provider("waffo").create_payment(request, waffo_secrets)
    assert json.loads(fake_api.calls[0].body)["orderAmount"] == "1500"


@pytest.mark.parametrize("case", ["unsigned", "wrong-key", "tampered", "error-code"])
def test_waffo_untrusted_or_refused_response_is_a_provider_error(
    case: str,
    fake_api: FakeApi,
    monkeypatch: pytest.MonkeyPatch,
    merchant: KeyPair,
    platform: KeyPair,
    waffo_secrets: dict[str, str],
) -> None:
    monkeypatch.setenv("WAFFO_API_BASE", fake_api.url)
    action = json.dumps({"actionType": "WEB", "webUrl": "https://evil.example/pay"})
    payload: dict[str, Any] = {"code": "0", "data": {"orderAction": action}}

    def respond(_c: Captured) -> tuple[int, dict[str, str], bytes]:
        if case == "unsigned":
            return 200, {}, json.dumps(payload).encode()
        if case == "wrong-key":
            return waffo_response(platform, payload, signer=merchant)
        if case == "tampered":
            status, headers, raw = waffo_response(platform, payload)
            return status, headers, raw.replace(b"evil", b"evix")
        return waffo_response(platform, {"code": "A0003", "msg": "Parameter validation failed"})

    fake_api.respond.append(respond)
    request = checkout_request(method="waffo", pay_money=Decimal("10.00"), currency="USD")
    with pytest.raises(ProviderError):
        get_provider("waffo").create_payment(request, waffo_secrets)


def test_waffo_is_configured_only_with_every_credential(
    monkeypatch: pytest.MonkeyPatch, waffo_secrets: dict[str, str]
) -> None:
    provider = get_provider("waffo")
    monkeypatch.setenv("WAFFO_API_BASE", "https://api.waffo.example/api/v1")
    assert provider.is_configured(waffo_secrets)
    for name in waffo_secrets:
        assert not provider.is_configured({**waffo_secrets, name: ""})
    monkeypatch.setenv("WAFFO_API_BASE", "")
    assert not provider.is_configured(waffo_secrets)


def test_creem_is_configured_only_with_every_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = get_provider("creem")
    monkeypatch.setenv("CREEM_API_BASE", "https://api.creem.example")
    assert provider.is_configured(CREEM_SECRETS)
    for name in CREEM_SECRETS:
        assert not provider.is_configured({**CREEM_SECRETS, name: ""})


def test_provider_modules_import_requests_and_cryptography_only_when_used() -> None:
    """A cold start pays for an SDK only in the call that needs it."""
    code = (
        "import sys\n"
        "import billing.payments.providers.epay\n"
        "import billing.payments.providers.creem\n"
        "import billing.payments.providers.waffo\n"
        "heavy = [m for m in ('requests', 'cryptography') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "layers" / "common")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == ""
