"""The provider-agnostic webhook intake and method gate, with a stand-in provider: verified
events are queued before the acknowledgement; refused, ignored or unqueueable webhooks are not
acknowledged as queued; a missing or broken provider module affects only itself."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from billing.payments import payment_queue, topup_options, webhooks
from billing.payments.providers.base import (
    EventType,
    InvalidSignature,
    PaymentEvent,
    UnsupportedEvent,
    WebhookReply,
    WebhookRequest,
)
from billing.settings import parse_settings

ROOT = Path(__file__).resolve().parents[2]
REQUEST = WebhookRequest(method="POST", headers={}, raw_body=b"{}", query={})
EVENT = PaymentEvent(
    provider="creem",
    event_id="evt_1",
    type=EventType.PAID,
    order_id="ord_1",
    amount=Decimal("9.99"),
    currency="USD",
)


class FakeProvider:
    method = "creem"

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome

    def is_configured(self, secrets: dict[str, str]) -> bool:
        return True

    def create_payment(self, request: Any, secrets: dict[str, str]) -> Any:
        raise NotImplementedError

    def parse_webhook(self, request: WebhookRequest, secrets: dict[str, str]) -> list[PaymentEvent]:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return list(self.outcome)

    def reply(self, accepted: bool, secrets: dict[str, str]) -> WebhookReply:
        return WebhookReply(status=200 if accepted else 401, body="ok" if accepted else "no")


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[PaymentEvent]:
    queued: list[PaymentEvent] = []
    monkeypatch.setattr(webhooks, "provider_secrets", dict)
    monkeypatch.setattr(payment_queue, "send", queued.append)
    return queued


def use(monkeypatch: pytest.MonkeyPatch, provider: Any) -> None:
    monkeypatch.setattr(webhooks, "get_provider", lambda name: provider)


def test_verified_events_are_queued_then_acknowledged(
    monkeypatch: pytest.MonkeyPatch, sent: list[PaymentEvent]
) -> None:
    use(monkeypatch, FakeProvider([EVENT, EVENT]))
    assert webhooks.receive("creem", REQUEST).status == 200
    # Stamped with when they reached us (an order's lifetime is judged by it).
    assert [event._replace(received_at=None) for event in sent] == [EVENT, EVENT]
    assert all(event.received_at for event in sent)


def test_a_bad_signature_gets_the_providers_refusal_and_nothing_is_queued(
    monkeypatch: pytest.MonkeyPatch, sent: list[PaymentEvent]
) -> None:
    use(monkeypatch, FakeProvider(InvalidSignature("bad")))
    assert webhooks.receive("creem", REQUEST).status == 401
    assert sent == []


def test_an_unsupported_event_is_acknowledged_and_not_queued(
    monkeypatch: pytest.MonkeyPatch, sent: list[PaymentEvent]
) -> None:
    use(monkeypatch, FakeProvider(UnsupportedEvent("x")))
    assert webhooks.receive("creem", REQUEST).status == 200
    assert sent == []


def test_a_queue_failure_is_a_503_not_an_acknowledgement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhooks, "provider_secrets", dict)
    use(monkeypatch, FakeProvider([EVENT]))

    def fail(event: PaymentEvent) -> None:
        raise ConnectionError("sqs is down")

    monkeypatch.setattr(payment_queue, "send", fail)
    with pytest.raises(webhooks.QueueUnavailable) as raised:
        webhooks.receive("creem", REQUEST)
    assert raised.value.status == 503


def test_a_broken_provider_module_is_a_503_for_that_provider_only(
    monkeypatch: pytest.MonkeyPatch, sent: list[PaymentEvent]
) -> None:
    def broken(name: str) -> Any:
        raise ImportError(f"no module billing.payments.providers.{name}")

    monkeypatch.setattr(webhooks, "get_provider", broken)
    with pytest.raises(webhooks.ProviderUnavailable):
        webhooks.receive("waffo", REQUEST)
    with pytest.raises(webhooks.ProviderUnavailable):
        webhooks.receive("paypal", REQUEST)
    assert sent == []


def test_a_broken_provider_module_leaves_the_other_methods_offered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = parse_settings((ROOT / "settings" / "local.json").read_text())
    real = topup_options.get_provider

    def partly_broken(name: str) -> Any:
        if name == "epay":
            raise SyntaxError("half-written module")
        return real(name)

    monkeypatch.setattr(topup_options, "get_provider", partly_broken)
    offered = topup_options.available_methods(
        settings, {"stripe_secret_key": "sk_test_x", "stripe_webhook_secret": "whsec_x"}
    )
    assert "stripe" in offered and "epay" not in offered


def test_queue_message_ids() -> None:
    assert payment_queue.group_id(EVENT) == "ord_1"
    dispute = PaymentEvent(
        provider="stripe",
        event_id="evt_2",
        type=EventType.DISPUTED,
        order_id=None,
        provider_payment_id="pi_1",
    )
    assert payment_queue.group_id(dispute) == "pi_1"
    odd = PaymentEvent(provider="x", event_id="e", type=EventType.PAID, order_id="ä" * 200)
    assert len(payment_queue.group_id(odd)) == 64
    assert payment_queue.deduplication_id(EVENT) != payment_queue.deduplication_id(dispute)
    same_id_other_provider = PaymentEvent(
        provider="epay", event_id="evt_1", type=EventType.PAID, order_id="ord_1"
    )
    assert payment_queue.deduplication_id(EVENT) != payment_queue.deduplication_id(
        same_id_other_provider
    )
    assert json.loads(EVENT.to_message())["amount"] == "9.99"
