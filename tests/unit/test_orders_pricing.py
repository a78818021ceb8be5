"""The server-side quote: amount x unit_price x discount, half-up to the currency's minor unit;
products; bounds; and which methods are offered."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from billing.errors import InvalidAmount, InvalidRequest, MethodUnavailable
from billing.payments import orders, topup_options
from billing.settings import Settings, parse_settings
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
LOCAL = json.loads((ROOT / "settings" / "local.json").read_text())
STRIPE_KEYS = {"stripe_secret_key": "sk_test_x", "stripe_webhook_secret": "whsec_x"}


def settings_with(**methods: dict[str, Any]) -> Settings:
    document = json.loads(json.dumps(LOCAL))
    document["methods"].update(methods)
    document["topup"]["discounts"] = {"100": "0.95", "200": "0.90", "7": "0.5"}
    return parse_settings(json.dumps(document))


SETTINGS = settings_with(
    waffo={"name": "Waffo JPY", "currency": "JPY", "unit_price": "150"},
    epay={"name": "EPay", "currency": "CNY", "unit_price": "7.30", "channels": ["alipay", "wxpay"]},
)


def quote(method: str, amount: int | None = None, **kwargs: Any) -> orders.Quote:
    config = SETTINGS.methods[method]  # type: ignore[index]
    return orders.quote(SETTINGS, method, config, amount=amount, **kwargs)


@pytest.mark.parametrize(
    ("method", "amount", "pay_money", "currency", "quota"),
    [
        ("stripe", 1, "1.00", "USD", 500_000),
        ("stripe", 10, "10.00", "USD", 5_000_000),
        ("stripe", 100, "95.00", "USD", 50_000_000),  # discount 0.95
        ("stripe", 200, "180.00", "USD", 100_000_000),  # discount 0.90
        ("stripe", 10_000, "10000.00", "USD", 5_000_000_000),  # max, beyond int32
        ("epay", 10, "73.00", "CNY", 5_000_000),
        ("epay", 100, "693.50", "CNY", 50_000_000),  # 7.30 x 100 x 0.95
        ("epay", 7, "25.55", "CNY", 3_500_000),  # 7.30 x 7 x 0.5 = 25.55 exactly
        ("waffo", 3, "450", "JPY", 1_500_000),  # zero-decimal currency
        ("waffo", 7, "525", "JPY", 3_500_000),  # 150 x 7 x 0.5 = 525
        ("waffo", 100, "14250", "JPY", 50_000_000),  # 150 x 100 x 0.95
    ],
)
def test_quote_table(method: str, amount: int, pay_money: str, currency: str, quota: int) -> None:
    priced = quote(method, amount)
    assert priced.pay_money == Decimal(pay_money)
    assert str(priced.pay_money) == pay_money  # the exact string the order shows
    assert priced.currency == currency
    assert priced.quota == quota and isinstance(priced.quota, int)
    assert priced.amount == amount


@pytest.mark.parametrize(
    ("currency", "unit_price", "amount", "expected"),
    [
        # x.xx5 exactly: half-up rounds away from zero (banker's rounding would not)
        ("USD", "0.333", 5, "1.67"),  # 1.665
        ("USD", "0.125", 1, "0.13"),  # 0.125 -> 0.13 (half-even: 0.12)
        ("USD", "0.0125", 2, "0.03"),  # 0.025 -> 0.03 (half-even: 0.02)
        ("USD", "0.3331", 5, "1.67"),  # 1.6655
        ("USD", "0.3329", 5, "1.66"),  # 1.6645
        ("JPY", "0.5", 5, "3"),  # 2.5 -> 3 (half-even: 2)
        ("JPY", "1.5", 3, "5"),  # 4.5 -> 5 (half-even: 4)
        ("KRW", "1299.5", 1, "1300"),
        # Stripe takes three-decimal currencies with a last digit of 0: two decimals charged
        ("KWD", "0.1235", 1, "0.12"),
        ("KWD", "0.125", 1, "0.13"),
        ("IDR", "15000.555", 1, "15000.56"),  # IDR is two-decimal on Stripe
        ("ISK", "149.5", 1, "150"),  # whole krónur only on Stripe
    ],
)
def test_rounding_is_half_up_to_the_minor_unit(
    currency: str, unit_price: str, amount: int, expected: str
) -> None:
    settings = settings_with(stripe={"name": "S", "currency": currency, "unit_price": unit_price})
    config = settings.methods["stripe"]
    priced = orders.quote(settings, "stripe", config, amount=amount)
    assert str(priced.pay_money) == expected


@pytest.mark.parametrize(
    ("method", "unit_price", "pay_money"),
    [("stripe", "15999.5", "159995.00"), ("waffo", "15999.5", "159995")],
)
def test_a_price_has_the_decimals_of_its_provider(
    method: str, unit_price: str, pay_money: str
) -> None:
    """The same IDR price: two decimals to Stripe, whole rupiah to Waffo."""
    settings = settings_with(**{method: {"name": "M", "currency": "IDR", "unit_price": unit_price}})
    config = settings.methods[method]  # type: ignore[index]
    assert str(orders.quote(settings, method, config, amount=10).pay_money) == pay_money


@pytest.mark.parametrize("amount", [0, -1, -500, 10_001, 10**30, None])
def test_amounts_outside_the_bounds_are_invalid(amount: int | None) -> None:
    with pytest.raises(InvalidAmount):
        quote("stripe", amount)


def test_a_bool_is_not_an_amount() -> None:
    with pytest.raises(InvalidAmount):
        quote("stripe", True)  # type: ignore[arg-type]


def test_an_amount_too_small_for_the_currency_is_invalid() -> None:
    settings = settings_with(stripe={"name": "S", "currency": "USD", "unit_price": "0.001"})
    with pytest.raises(InvalidAmount):
        orders.quote(settings, "stripe", settings.methods["stripe"], amount=1)  # 0.001 -> 0.00


def test_product_based_method_takes_the_product_price_and_quota() -> None:
    priced = quote("creem", product_id="prod_pro")
    assert priced.pay_money == Decimal("49.00") and str(priced.pay_money) == "49.00"
    assert priced.currency == "USD" and priced.quota == 25_000_000
    assert priced.amount == 0 and priced.product_id == "prod_pro"


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("creem", {"amount": 10, "product_id": "prod_pro"}),  # a price source too many
        ("creem", {"amount": 10}),  # amount instead of a product
        ("creem", {"product_id": "prod_unknown"}),
        ("stripe", {"amount": 10, "product_id": "prod_pro"}),  # stripe sells amounts
        ("stripe", {"amount": 10, "channel": "alipay"}),  # stripe has no channels
        ("epay", {"amount": 10, "channel": "paypal"}),  # not one of epay's channels
    ],
)
def test_inconsistent_requests_are_invalid(method: str, kwargs: dict[str, Any]) -> None:
    amount = kwargs.pop("amount", None)
    with pytest.raises(InvalidRequest):
        quote(method, amount, **kwargs)


def test_channel_defaults_to_the_first_configured() -> None:
    assert quote("epay", 10).channel == "alipay"
    assert quote("epay", 10, channel="wxpay").channel == "wxpay"


@given(st.integers(min_value=1, max_value=10_000))
def test_quote_is_exact_for_every_amount(amount: int) -> None:
    priced = quote("epay", amount)
    discount = SETTINGS.topup.discount_for(amount)
    exact = Decimal(amount) * Decimal("7.30") * discount
    assert priced.pay_money.as_tuple().exponent == -2
    assert abs(priced.pay_money - exact) <= Decimal("0.005")
    assert priced.quota == amount * 500_000


def test_order_ids_are_unguessable_and_gateway_safe() -> None:
    ids = {orders.new_order_id() for _ in range(2000)}
    assert len(ids) == 2000
    for order_id in ids:
        assert order_id.startswith("ord_") and len(order_id) == 28
        assert order_id[4:].isalnum()


def test_a_method_is_offered_only_when_enabled_and_configured() -> None:
    offered = topup_options.available_methods(SETTINGS, STRIPE_KEYS)
    assert "stripe" in offered
    unconfigured = {"stripe_secret_key": "sk_test_x", "stripe_webhook_secret": ""}
    assert "stripe" not in topup_options.available_methods(SETTINGS, unconfigured)
    with pytest.raises(MethodUnavailable):
        topup_options.require_method(SETTINGS, unconfigured, "stripe")
    disabled = settings_with(
        stripe={"name": "S", "currency": "USD", "unit_price": "1", "enabled": False}
    )
    assert "stripe" not in topup_options.available_methods(disabled, STRIPE_KEYS)
    with pytest.raises(MethodUnavailable):
        topup_options.require_method(disabled, STRIPE_KEYS, "stripe")
    for unknown in ("paypal", "", "STRIPE", "admin"):
        with pytest.raises(MethodUnavailable):
            topup_options.require_method(SETTINGS, STRIPE_KEYS, unknown)


def test_options_render_the_contract_fields() -> None:
    body = topup_options.options(SETTINGS, STRIPE_KEYS)
    assert set(body) == {
        "quota_per_unit",
        "amount_options",
        "min_topup",
        "max_topup",
        "discounts",
        "methods",
        "referral_rebate_percent",
        "referral_min_transfer",
    }
    assert body["discounts"]["100"] == "0.95"
    stripe = next(m for m in body["methods"] if m["id"] == "stripe")
    assert stripe == {"id": "stripe", "name": "Stripe", "currency": "USD", "unit_price": "1.00"}
    json.dumps(body)  # plain JSON: no Decimals
