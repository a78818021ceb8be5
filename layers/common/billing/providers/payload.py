"""Small readers of provider payloads shared by the provider modules."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from billing import money


def text_or_id(value: Any) -> str | None:
    """A non-empty string, or the id of an expanded object (providers send either)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping):
        return text_or_id(value.get("id"))
    return None


def minor_amount(minor: Any, currency: str | None) -> Decimal | None:
    """An integer amount in minor units as major-unit Decimal; None if it is not one."""
    if currency is None or not isinstance(minor, int) or isinstance(minor, bool):
        return None
    return money.from_minor(minor, currency)
