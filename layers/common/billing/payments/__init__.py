"""Payments: top-up orders (the server-side quote and checkout), the providers (Stripe, EPay,
Creem, Waffo), webhook intake onto the credit queue, and crediting off it, exactly once.

This is the package's face: the names other packages may use (auto top-up charges a saved
card through them). Handlers import its modules directly. Keep this file free of module-level
imports, so that a handler importing one module (the webhook intake, say) does not pay for the
others: each name here imports its module when called.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class AutoCharge(NamedTuple):
    """What the provider said to an off-session charge: accepted (paid, or processing: the
    webhook will tell), or refused with a code (`card_declined`, `requires_action`,
    `no_saved_card`, ...)."""

    accepted: bool
    code: str = ""
    message: str = ""
    provider_payment_id: str | None = None


def new_order_id() -> str:
    from billing.payments import orders

    return orders.new_order_id()


def charge_saved_card(user_id: str, order_id: str, amount: int) -> AutoCharge:
    """Create (once) the auto order `order_id` for `amount` units at the server's price and
    charge the user's saved card off-session for it (once per order)."""
    from billing.payments import auto

    return auto.charge_saved_card(user_id, order_id, amount)


def auto_price(amount: int) -> dict[str, Any]:
    """What `amount` units cost by card ({"pay_money", "currency", "quota"}); raises
    InvalidAmount or MethodUnavailable."""
    from billing.payments import auto

    return auto.price(amount)


def saved_card(user_id: str) -> dict[str, Any] | None:
    """The card saved for off-session payments ({"brand", "last4"}), or None."""
    from billing.payments import auto

    return auto.saved_card(user_id)


def order_status(order_id: str) -> str | None:
    """The order's status as the API shows it (an overdue pending order is expired)."""
    from billing.payments import orders

    order = orders.find_order(order_id)
    return None if order is None else str(orders.render_order(order)["status"])


__all__: list[str] = [
    "AutoCharge",
    "auto_price",
    "charge_saved_card",
    "new_order_id",
    "order_status",
    "saved_card",
]
