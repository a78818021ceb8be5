"""Small readers of provider payloads shared by the provider modules."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from billing import money
from billing.facts import ErrorCode
from billing.payments.providers.base import InvalidSignature, WebhookReply


def verified_object(raw_body: bytes) -> dict[str, Any]:
    """The JSON object of a body whose signature was verified. A signed body that is not one
    is refused like a bad signature: no provider sends that."""
    try:
        event = json.loads(raw_body)
    except ValueError as exc:  # not UTF-8 or not JSON
        raise InvalidSignature("unreadable body") from exc
    if not isinstance(event, dict):
        raise InvalidSignature("not an event")
    return event


def json_ack(accepted: bool, refused_status: int) -> WebhookReply:
    """The JSON reply of Stripe- and Creem-style webhooks: 2xx acknowledges, else a refusal."""
    if accepted:
        return WebhookReply(status=200, body=json.dumps({"received": True}))
    return WebhookReply(
        status=refused_status,
        body=json.dumps(
            {"error": {"code": ErrorCode.INVALID_SIGNATURE, "message": "Invalid signature."}}
        ),
    )


def text_or_id(value: Any) -> str | None:
    """A non-empty string, or the id of an expanded object (providers send either)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping):
        return text_or_id(value.get("id"))
    return None


def currency_code(value: Any) -> str | None:
    """A currency as its upper-case ISO code (Stripe sends "usd"); None if absent."""
    text = text_or_id(value)
    return text.upper() if text else None


def decimal_amount(text: str | None, currency: str | None) -> Decimal | None:
    """A decimal amount ("10.00") in major units; None if absent or unreadable, so that
    crediting sees no amount and disputes the order instead of crediting it."""
    if not text:
        return None
    try:
        return money.parse(text, currency or "")
    except ValueError:
        return None


def minor_amount(minor: Any, currency: str | None, provider: str) -> Decimal | None:
    """An integer amount in `provider`'s minor units of `currency` as a major-unit Decimal
    (exactly); None if it is not one."""
    if currency is None or not isinstance(minor, int) or isinstance(minor, bool):
        return None
    return money.from_minor(minor, currency, provider)
