"""The settings document is validated at load; a bad one fails naming the field (and a provider
paired with a currency it cannot take names the provider and the currency)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from billing.errors import SettingsError
from billing.settings import load_settings, parse_settings

LOCAL = Path(__file__).resolve().parents[2] / "settings" / "local.json"


def local_document() -> dict[str, Any]:
    return json.loads(LOCAL.read_text())


def test_local_settings_are_valid_and_exact() -> None:
    settings = parse_settings(LOCAL.read_text())
    assert settings.quota_per_unit == 500000
    assert settings.methods["epay"].unit_price == Decimal("7.30")
    assert settings.topup.discount_for(100) == Decimal("0.95")
    assert settings.topup.discount_for(7) == Decimal(1)
    # ratios keep their exact decimal value (no float noise)
    assert settings.pricing.model_ratios["gpt-4o-mini"] == Decimal("0.075")


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("methods", "stripe", "unit_price"), "-1", "methods.stripe.unit_price"),
        (("methods", "stripe", "currency"), "usd", "methods.stripe.currency"),
        (("quota_per_unit",), 0, "quota_per_unit"),
        (("referral", "rebate_percent"), "101", "referral.rebate_percent"),
        (("topup", "discounts"), {"100": "1.5"}, "topup.discounts.100"),
        (("limits", "max_batch_events"), 501, "limits.max_batch_events"),
        (
            ("methods", "paypal"),
            {"name": "x", "currency": "USD", "unit_price": "1"},
            "methods.paypal",
        ),
        (("pricing", "modle_ratios"), {}, "pricing.modle_ratios"),
        # a provider paired with a currency it cannot take
        (("methods", "epay", "currency"), "USD", "methods.epay.currency: epay cannot take USD"),
        (("methods", "stripe", "currency"), "IRR", "methods.stripe.currency: stripe cannot take"),
        (("methods", "creem", "currency"), "JPY", "methods.creem.currency: creem cannot take JPY"),
        (
            ("methods", "creem", "products"),
            [
                {
                    "product_id": "prod_x",
                    "name": "X",
                    "price": "1",
                    "currency": "CNY",
                    "quota": 1,
                }
            ],
            "methods.creem.products.prod_x.currency: creem cannot take CNY",
        ),
    ],
)
def test_bad_settings_name_the_field(path: tuple[str, ...], value: Any, field: str) -> None:
    document = local_document()
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(SettingsError) as failure:
        parse_settings(json.dumps(document))
    assert field in str(failure.value)


def test_idr_is_taken_by_stripe_and_waffo() -> None:
    document = local_document()
    for method in ("stripe", "waffo"):
        document["methods"][method].update(currency="IDR", unit_price="16000")
    settings = parse_settings(json.dumps(document))
    assert {settings.methods[m].currency for m in ("stripe", "waffo")} == {"IDR"}


def test_inconsistent_topup_range_is_refused() -> None:
    document = local_document()
    document["topup"]["min_topup"] = 500
    with pytest.raises(SettingsError, match="topup"):
        parse_settings(json.dumps(document))


def test_not_json_is_refused() -> None:
    with pytest.raises(SettingsError, match="not valid JSON"):
        parse_settings("{not json")


def test_load_reads_the_file_and_caches_by_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "settings.json"
    path.write_text(LOCAL.read_text())
    monkeypatch.setenv("SETTINGS_FILE", str(path))
    first = load_settings()
    assert load_settings() is first
    document = local_document()
    document["quota_per_unit"] = 1000
    path.write_text(json.dumps(document))
    assert load_settings().quota_per_unit == 1000
    path.write_text("[]")
    with pytest.raises(SettingsError):
        load_settings()
