"""What a user may buy: GET /topup/options, and the gate every checkout passes.

A method is offered only when the settings enable it AND its provider has every credential it
needs (`Provider.is_configured`). Checkout with anything else is 400 method_unavailable, so a
half-configured provider can never take a payment we could not verify.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from billing.errors import MethodUnavailable
from billing.payments.providers import METHODS, get_provider
from billing.payments.providers.base import Provider
from billing.settings import PaymentMethod, Settings

logger = Logger(child=True)


def _provider(method: str) -> Provider | None:
    try:
        return get_provider(method)
    except KeyError:
        return None
    except Exception:
        # A provider module that is missing or broken must not take the others down.
        logger.exception("payment provider module unavailable", extra={"method": method})
        return None


def available_methods(settings: Settings, secrets: dict[str, str]) -> dict[str, PaymentMethod]:
    """The methods a user may pay with now, in the order of METHODS."""
    configured = {str(method): config for method, config in settings.methods.items()}
    offered: dict[str, PaymentMethod] = {}
    for method in METHODS:
        config = configured.get(method)
        if config is None or not config.enabled:
            continue
        provider = _provider(method)
        if provider is not None and provider.is_configured(secrets):
            offered[method] = config
    return offered


def require_method(
    settings: Settings, secrets: dict[str, str], method: str
) -> tuple[Provider, PaymentMethod]:
    """The provider and settings of an offered method; MethodUnavailable otherwise."""
    config = available_methods(settings, secrets).get(method) if method in METHODS else None
    provider = _provider(method) if config is not None else None
    if config is None or provider is None:
        raise MethodUnavailable()
    return provider, config


def _render_method(method: str, config: PaymentMethod) -> dict[str, Any]:
    rendered: dict[str, Any] = {
        "id": method,
        "name": config.name,
        "currency": config.currency,
        "unit_price": str(config.unit_price),
    }
    if config.channels:
        rendered["channels"] = list(config.channels)
    if config.products:
        rendered["products"] = [
            {
                "product_id": product.product_id,
                "name": product.name,
                "price": str(product.price),
                "currency": product.currency,
                "quota": product.quota,
            }
            for product in config.products
        ]
    return rendered


def options(settings: Settings, secrets: dict[str, str]) -> dict[str, Any]:
    """The body of GET /topup/options (API.md, Top-up)."""
    return {
        "quota_per_unit": settings.quota_per_unit,
        "amount_options": list(settings.topup.amount_options),
        "min_topup": settings.topup.min_topup,
        "max_topup": settings.topup.max_topup,
        "discounts": {amount: str(value) for amount, value in settings.topup.discounts.items()},
        "methods": [
            _render_method(method, config)
            for method, config in available_methods(settings, secrets).items()
        ],
        "referral_rebate_percent": str(settings.referral.rebate_percent),
        "referral_min_transfer": settings.referral.min_transfer,
    }
