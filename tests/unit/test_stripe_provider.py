"""The Stripe provider: signature verification against vectors built here from Stripe's
documented formula (v1 = hex HMAC-SHA256 of "{t}.{raw body}" with the endpoint secret), event
mapping, and the Checkout Session request it sends."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qsl

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
from billing.payments.providers.stripe import PROVIDER

SECRET = "whsec_unit_test_secret"
SECRETS = {"stripe_secret_key": "sk_test_unit", "stripe_webhook_secret": SECRET}
ORDER = "ord_Abcdefghijklmnopqrstuvwx"


def signature(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    """Stripe-Signature, computed from the documented formula (not with the SDK)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def session_event(
    event_type: str = "checkout.session.completed", **overrides: Any
) -> dict[str, Any]:
    session: dict[str, Any] = {
        "id": "cs_test_123",
        "object": "checkout.session",
        "mode": "payment",
        "status": "complete",
        "payment_status": "paid",
        "amount_total": 1000,
        "currency": "usd",
        "client_reference_id": ORDER,
        "metadata": {"order_id": ORDER},
        "payment_intent": "pi_123",
    }
    session.update(overrides)
    return {
        "id": "evt_123",
        "object": "event",
        "type": event_type,
        "livemode": False,
        "data": {"object": session},
    }


def request(body: bytes, header: str | None) -> WebhookRequest:
    headers = {"content-type": "application/json"}
    if header is not None:
        headers["stripe-signature"] = header
    return WebhookRequest(method="POST", headers=headers, raw_body=body, query={})


def raw(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


# ------------------------------------------------------------ signatures


def test_a_correctly_signed_event_is_accepted() -> None:
    body = raw(session_event())
    [event] = PROVIDER.parse_webhook(request(body, signature(body)), SECRETS)
    assert event.type is EventType.PAID
    assert event.order_id == ORDER


def test_a_signature_four_minutes_old_is_still_within_tolerance() -> None:
    body = raw(session_event())
    header = signature(body, timestamp=int(time.time()) - 240)
    assert PROVIDER.parse_webhook(request(body, header), SECRETS)


def test_one_valid_signature_among_several_is_enough() -> None:
    # During secret rolls Stripe sends one v1 per active secret.
    body = raw(session_event())
    stamp = int(time.time())
    good = signature(body, timestamp=stamp).split(",v1=")[1]
    header = f"t={stamp},v1={'0' * 64},v1={good}"
    assert PROVIDER.parse_webhook(request(body, header), SECRETS)


@pytest.mark.parametrize(
    "case",
    [
        "forged_digest",
        "body_changed_after_signing",
        "wrong_secret",
        "six_minutes_old",
        "future_timestamp_reused_on_other_body",
        "missing_header",
        "empty_header",
        "garbage_header",
        "v0_scheme_only",
        "no_secret_configured",
    ],
)
def test_bad_signatures_are_refused(case: str) -> None:
    event = session_event()
    body = raw(event)
    secrets = SECRETS
    header: str | None
    if case == "forged_digest":
        header = f"t={int(time.time())},v1={'ab' * 32}"
    elif case == "body_changed_after_signing":
        header = signature(body)
        event["data"]["object"]["amount_total"] = 1
        body = raw(event)
    elif case == "wrong_secret":
        header = signature(body, secret="whsec_someone_else")
    elif case == "six_minutes_old":
        header = signature(body, timestamp=int(time.time()) - 360)
    elif case == "future_timestamp_reused_on_other_body":
        header = signature(b"{}", timestamp=int(time.time()) + 60)
    elif case == "missing_header":
        header = None
    elif case == "empty_header":
        header = ""
    elif case == "garbage_header":
        header = "not a signature"
    elif case == "v0_scheme_only":
        header = signature(body).replace("v1=", "v0=")
    else:
        header = signature(body)
        secrets = {**SECRETS, "stripe_webhook_secret": ""}
    with pytest.raises(InvalidSignature):
        PROVIDER.parse_webhook(request(body, header), secrets)


@pytest.mark.parametrize("body", [b"\xff\xfe not json", b"[]", b'"event"'])
def test_a_signed_body_that_is_not_a_json_object_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidSignature):
        PROVIDER.parse_webhook(request(body, signature(body)), SECRETS)


def test_replies() -> None:
    assert PROVIDER.reply(True, SECRETS).status == 200
    refused = PROVIDER.reply(False, SECRETS)
    assert refused.status == 400
    assert json.loads(refused.body)["error"]["code"] == "invalid_signature"


# ------------------------------------------------------------ event mapping


def parse(event: dict[str, Any]) -> PaymentEvent:
    body = raw(event)
    [parsed] = PROVIDER.parse_webhook(request(body, signature(body)), SECRETS)
    return parsed


def test_completed_and_paid_maps_to_paid_with_amount_and_payment_intent() -> None:
    event = parse(session_event())
    assert event == PaymentEvent(
        provider="stripe",
        event_id="evt_123",
        type=EventType.PAID,
        order_id=ORDER,
        amount=Decimal("10.00"),
        currency="USD",
        provider_payment_id="pi_123",
        detail={"stripe_type": "checkout.session.completed", "object_id": "cs_test_123"},
    )
    assert PaymentEvent.from_message(event.to_message()) == event


def test_async_success_maps_to_paid_and_zero_decimal_amounts_are_whole() -> None:
    event = parse(
        session_event("checkout.session.async_payment_succeeded", amount_total=1500, currency="jpy")
    )
    assert event.type is EventType.PAID
    assert event.amount == Decimal("1500") and event.currency == "JPY"


def test_the_order_id_falls_back_to_client_reference_id() -> None:
    assert parse(session_event(metadata={})).order_id == ORDER


def test_completed_but_unpaid_is_not_acted_on() -> None:
    body = raw(session_event(payment_status="unpaid"))
    with pytest.raises(UnsupportedEvent):
        PROVIDER.parse_webhook(request(body, signature(body)), SECRETS)


@pytest.mark.parametrize(
    ("stripe_type", "expected"),
    [
        ("checkout.session.async_payment_failed", EventType.FAILED),
        ("checkout.session.expired", EventType.EXPIRED),
    ],
)
def test_failed_and_expired_sessions(stripe_type: str, expected: EventType) -> None:
    event = parse(session_event(stripe_type, payment_status="unpaid"))
    assert event.type is expected and event.order_id == ORDER and event.amount is None


def test_charge_refunded_carries_the_order_metadata_and_payment_intent() -> None:
    charge = {
        "id": "ch_1",
        "object": "charge",
        "amount": 1000,
        "amount_refunded": 1000,
        "refunded": True,
        "currency": "usd",
        "payment_intent": "pi_123",
        "metadata": {"order_id": ORDER},
    }
    event = parse(
        {"id": "evt_r", "object": "event", "type": "charge.refunded", "data": {"object": charge}}
    )
    assert event.type is EventType.REFUNDED
    assert event.order_id == ORDER and event.provider_payment_id == "pi_123"
    assert event.amount == Decimal("10.00") and event.cumulative and event.full_refund


def test_a_partial_refund_carries_the_cumulative_amount_refunded() -> None:
    charge = {
        "id": "ch_1",
        "object": "charge",
        "amount": 15_000_000,
        "amount_refunded": 7_500_000,
        "refunded": False,
        "currency": "idr",
        "payment_intent": "pi_123",
        "metadata": {"order_id": ORDER},
    }
    event = parse(
        {"id": "evt_p", "object": "event", "type": "charge.refunded", "data": {"object": charge}}
    )
    # IDR is two-decimal on Stripe: 7500000 sen are 75000 rupiah.
    assert event.amount == Decimal("75000.00") and event.currency == "IDR"
    assert event.cumulative and not event.full_refund


def test_a_dispute_is_matched_by_payment_intent_only() -> None:
    dispute = {
        "id": "dp_1",
        "object": "dispute",
        "amount": 1000,
        "currency": "usd",
        "charge": "ch_1",
        "payment_intent": "pi_123",
        "metadata": {},
    }
    event = parse(
        {
            "id": "evt_d",
            "object": "event",
            "type": "charge.dispute.created",
            "data": {"object": dispute},
        }
    )
    assert event.type is EventType.DISPUTED
    assert event.order_id is None and event.provider_payment_id == "pi_123"


@pytest.mark.parametrize(
    "event",
    [
        {"id": "evt_x", "object": "event", "type": "customer.created", "data": {"object": {}}},
        {"id": "evt_x", "object": "event", "type": "payment_intent.succeeded", "data": {}},
        session_event(metadata={}, client_reference_id=None),  # not a session we created
    ],
)
def test_other_verified_events_are_unsupported(event: dict[str, Any]) -> None:
    body = raw(event)
    with pytest.raises(UnsupportedEvent):
        PROVIDER.parse_webhook(request(body, signature(body)), SECRETS)


# ------------------------------------------------------------ creating a session


class FakeStripe(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict[str, Any]]] = []
    status = 200

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length).decode()
        FakeStripe.requests.append(
            {"path": self.path, "headers": dict(self.headers), "form": dict(parse_qsl(body))}
        )
        if FakeStripe.status != 200:
            payload = {"error": {"type": "invalid_request_error", "message": "nope"}}
        else:
            payload = {
                "id": "cs_test_fake",
                "object": "checkout.session",
                "url": "https://checkout.example/pay/cs_test_fake",
            }
        data = json.dumps(payload).encode()
        self.send_response(FakeStripe.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_stripe(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeStripe]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeStripe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeStripe.requests = []
    FakeStripe.status = 200
    monkeypatch.setenv("STRIPE_API_BASE", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield FakeStripe
    finally:
        server.shutdown()
        server.server_close()


def checkout_request(**overrides: Any) -> CheckoutRequest:
    values: dict[str, Any] = {
        "order_id": ORDER,
        "user_id": "user-1",
        "method": "stripe",
        "amount": 100,
        "pay_money": Decimal("95.00"),
        "currency": "USD",
        "quota": 50_000_000,
        "description": "Top-up: 100 units",
        "success_url": "https://console.example/ok",
        "cancel_url": "https://console.example/cancel",
        "notify_url": "https://api.example/webhooks/stripe",
    }
    values.update(overrides)
    return CheckoutRequest(**values)


def test_create_payment_asks_for_exactly_pay_money_once_per_order(
    fake_stripe: type[FakeStripe],
) -> None:
    session = PROVIDER.create_payment(checkout_request(), SECRETS)
    assert session.pay_url == "https://checkout.example/pay/cs_test_fake"
    assert session.session_id == "cs_test_fake"
    [sent] = fake_stripe.requests
    assert sent["path"] == "/v1/checkout/sessions"
    assert sent["headers"]["Authorization"] == "Bearer sk_test_unit"
    assert sent["headers"]["Idempotency-Key"] == f"checkout-{ORDER}"
    form = sent["form"]
    assert form["mode"] == "payment"
    assert form["line_items[0][price_data][unit_amount]"] == "9500"
    assert form["line_items[0][price_data][currency]"] == "usd"
    assert form["line_items[0][quantity]"] == "1"
    assert form["client_reference_id"] == ORDER
    assert form["metadata[order_id]"] == ORDER
    assert form["payment_intent_data[metadata][order_id]"] == ORDER
    assert form["success_url"] == "https://console.example/ok"
    assert form["cancel_url"] == "https://console.example/cancel"
    assert not any(key.startswith("line_items[1]") for key in form)


def test_zero_decimal_currencies_are_sent_in_whole_units(fake_stripe: type[FakeStripe]) -> None:
    PROVIDER.create_payment(checkout_request(pay_money=Decimal("14250"), currency="JPY"), SECRETS)
    form = fake_stripe.requests[0]["form"]
    assert form["line_items[0][price_data][unit_amount]"] == "14250"
    assert form["line_items[0][price_data][currency]"] == "jpy"


@pytest.mark.parametrize(
    ("pay_money", "currency", "unit_amount"),
    [
        ("160000.00", "IDR", "16000000"),  # two-decimal on Stripe (zero-decimal on Waffo)
        ("5", "ISK", "500"),  # whole krónur, as a two-decimal amount
        ("5.12", "KWD", "5120"),  # three decimals, last digit 0
        ("3000.00", "HUF", "300000"),
    ],
)
def test_stripe_special_currencies_are_sent_in_stripes_minor_units(
    fake_stripe: type[FakeStripe], pay_money: str, currency: str, unit_amount: str
) -> None:
    PROVIDER.create_payment(
        checkout_request(pay_money=Decimal(pay_money), currency=currency), SECRETS
    )
    form = fake_stripe.requests[0]["form"]
    assert form["line_items[0][price_data][unit_amount]"] == unit_amount


def test_a_stripe_error_is_a_provider_error(fake_stripe: type[FakeStripe]) -> None:
    fake_stripe.status = 400
    with pytest.raises(ProviderError):
        PROVIDER.create_payment(checkout_request(), SECRETS)


def test_a_live_key_never_serves_a_test_mode_method(fake_stripe: type[FakeStripe]) -> None:
    with pytest.raises(ProviderError):
        PROVIDER.create_payment(
            checkout_request(test_mode=True), {**SECRETS, "stripe_secret_key": "sk_live_x"}
        )
    assert fake_stripe.requests == []


def test_is_configured_needs_both_keys_and_the_registry_finds_it() -> None:
    assert get_provider("stripe") is PROVIDER
    assert PROVIDER.is_configured(SECRETS)
    assert not PROVIDER.is_configured({**SECRETS, "stripe_secret_key": ""})
    assert not PROVIDER.is_configured({"stripe_secret_key": "sk_test_x"})
