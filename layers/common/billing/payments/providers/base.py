"""The provider seam: create a payment; verify and parse a webhook into normalised events.

Everything provider-specific (API calls, signatures, event names, reply bodies) stays in the
provider's module; the pipeline (checkout, webhook queueing, crediting) sees only these types.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol


class InvalidSignature(Exception):
    """The webhook is not from the provider (bad, missing, stale or wrong-secret signature)."""


class UnsupportedEvent(Exception):
    """A verified webhook we do not act on (acknowledged, not queued)."""


class CheckoutRequest(NamedTuple):
    order_id: str
    user_id: str
    method: str
    amount: int  # top-up units (0 for product-based orders)
    pay_money: Decimal  # exactly what the provider must charge, in major units
    currency: str
    quota: int
    description: str
    success_url: str
    cancel_url: str
    notify_url: str  # our webhook URL for this provider
    channel: str | None = None
    product_id: str | None = None
    test_mode: bool = True
    # Stripe: the user's customer, when the checkout saves the card for off-session use.
    customer_id: str | None = None


class PaymentSession(NamedTuple):
    pay_url: str
    session_id: str | None = None


class EventType(StrEnum):
    PAID = "paid"
    FAILED = "failed"
    EXPIRED = "expired"
    REFUNDED = "refunded"
    DISPUTED = "disputed"


class PaymentEvent(NamedTuple):
    """A verified provider event, normalised; travels on the credit queue as JSON."""

    provider: str
    event_id: str  # the provider's event/notification id: the queue's deduplication id
    type: EventType
    order_id: str | None  # None when only provider_payment_id identifies it (disputes)
    amount: Decimal | None = None  # major units, as paid/refunded
    currency: str | None = None  # upper case
    provider_payment_id: str | None = None
    detail: Mapping[str, str] = MappingProxyType({})
    # Refunds: `amount` is the total refunded so far (cumulative, Stripe) or this refund
    # alone, which then carries the provider's refund id (Creem, Waffo); full_refund: the
    # provider says nothing of the payment is left.
    cumulative: bool = False
    full_refund: bool = False
    refund_id: str | None = None
    received_at: str | None = None  # when the webhook reached us (ISO UTC), set at intake

    def to_message(self) -> str:
        data = self._asdict()
        data["detail"] = dict(self.detail)
        data["type"] = str(self.type)
        data["amount"] = None if self.amount is None else str(self.amount)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_message(cls, body: str) -> PaymentEvent:
        data: dict[str, Any] = json.loads(body)
        amount = data.get("amount")
        detail = {str(k): str(v) for k, v in (data.get("detail") or {}).items()}
        kind = EventType(data["type"])
        provider = str(data["provider"])
        legacy = kind is EventType.REFUNDED and "full_refund" not in data
        return cls(
            provider=provider,
            event_id=str(data["event_id"]),
            type=kind,
            order_id=data.get("order_id"),
            amount=None if amount is None else Decimal(str(amount)),
            currency=data.get("currency"),
            provider_payment_id=data.get("provider_payment_id"),
            detail=detail,
            # Refunds queued before these fields existed said "fully_refunded" in detail,
            # and Stripe's amount was always amount_refunded (cumulative).
            cumulative=data.get("cumulative") is True or (legacy and provider == "stripe"),
            full_refund=data.get("full_refund") is True
            or (legacy and detail.get("fully_refunded") == "true"),
            refund_id=data.get("refund_id"),
            received_at=data.get("received_at"),
        )


class WebhookRequest(NamedTuple):
    method: str
    headers: dict[str, str]  # lower-case names
    raw_body: bytes  # exactly as received (base64 already undone)
    query: dict[str, str]


class WebhookReply(NamedTuple):
    status: int
    body: str
    content_type: str = "application/json"
    headers: Mapping[str, str] = MappingProxyType({})


class Provider(Protocol):
    method: str

    def is_configured(self, secrets: dict[str, str]) -> bool:
        """True when every credential it needs is set (else the method is not offered)."""
        ...

    def create_payment(self, request: CheckoutRequest, secrets: dict[str, str]) -> PaymentSession:
        """Ask the provider for a payment of exactly request.pay_money; raise ProviderError."""
        ...

    def parse_webhook(self, request: WebhookRequest, secrets: dict[str, str]) -> list[PaymentEvent]:
        """Verify the signature on the raw body (InvalidSignature) and normalise the events."""
        ...

    def reply(self, accepted: bool, secrets: dict[str, str]) -> WebhookReply:
        """The body the provider expects: accepted (queued or ignored) or refused."""
        ...
