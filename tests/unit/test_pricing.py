"""Pricing against a table of hand-computed cases (API.md's formula, Decimal, ceil, min 1)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from billing.errors import InvalidEvent, UnknownModel
from billing.settings import Settings, parse_settings
from billing.usage import pricing

ROOT = Path(__file__).resolve().parents[2]


def make_settings(**pricing_doc: object) -> Settings:
    document = json.loads((ROOT / "settings" / "local.json").read_text())
    document["pricing"] = pricing_doc
    return parse_settings(json.dumps(document))


SETTINGS = make_settings(
    model_ratios={
        "m-ratio": "1.25",
        "m-cheap": "0.075",
        "m-plain": "2",
        "m-free": "0",
        "m-both": "2",
    },
    completion_ratios={"m-ratio": "4", "m-cheap": "4"},
    default_completion_ratio="1.5",
    model_prices={"img": "0.04", "tiny": "0.0000031", "m-both": "0.002", "free-img": "0"},
    group_ratios={"default": "1", "vip": "0.8", "svip": "0.5", "zero": "0"},
    default_group="default",
)

# (model, prompt, completion, group, expected quota), each worked out by hand.
CASES = [
    # ratio only: 1000 * 1.25
    ("m-ratio", 1000, 0, None, 1250),
    # completion ratio: (1000 + 500*4) * 1.25 = 3750
    ("m-ratio", 1000, 500, None, 3750),
    # group ratio: 3750 * 0.8 = 3000
    ("m-ratio", 1000, 500, "vip", 3000),
    # explicit default group is the same as none
    ("m-ratio", 1000, 500, "default", 3750),
    # half price group: (7 + 3*4) * 1.25 * 0.5 = 11.875 -> 12
    ("m-ratio", 7, 3, "svip", 12),
    # rounding up: (100 + 10*4) * 0.075 = 10.5 -> 11
    ("m-cheap", 100, 10, None, 11),
    # exact result is not rounded: (1000 + 0) * 0.075 = 75
    ("m-cheap", 1000, 0, None, 75),
    # minimum of 1: 3 * 0.075 * 0.5 = 0.1125 -> 1
    ("m-cheap", 3, 0, "svip", 1),
    # minimum of 1 even for zero tokens on a priced model
    ("m-cheap", 0, 0, None, 1),
    # default completion ratio (1.5): (10 + 10*1.5) * 2 = 50
    ("m-plain", 10, 10, None, 50),
    # default completion ratio with a group: (10 + 10*1.5) * 2 * 0.8 = 40
    ("m-plain", 10, 10, "vip", 40),
    # fixed price: 0.04 * 500000 = 20000, tokens do not matter
    ("img", 0, 0, None, 20000),
    ("img", 5000, 9000, None, 20000),
    # fixed price with groups: 20000 * 0.8 = 16000, 20000 * 0.5 = 10000
    ("img", 0, 0, "vip", 16000),
    ("img", 0, 0, "svip", 10000),
    # fixed price rounds up: 0.0000031 * 500000 = 1.55 -> 2; * 0.5 = 0.775 -> 1
    ("tiny", 0, 0, None, 2),
    ("tiny", 0, 0, "svip", 1),
    # a model with both a price and a ratio is billed per call: 0.002 * 500000 = 1000
    ("m-both", 400, 400, None, 1000),
    # free: model ratio 0, model price 0, group ratio 0
    ("m-free", 1000, 1000, None, 0),
    ("free-img", 0, 0, None, 0),
    ("m-ratio", 1000, 500, "zero", 0),
    ("img", 0, 0, "zero", 0),
    # large counts stay exact (a float would lose the last unit): (10**15 + 1) * 0.075
    ("m-cheap", 10**15 + 1, 0, None, 75_000_000_000_001),
    ("m-ratio", 10**15, 10**15, None, 6_250_000_000_000_000),
]


@pytest.mark.parametrize(("model", "prompt", "completion", "group", "expected"), CASES)
def test_price_table(
    model: str, prompt: int, completion: int, group: str | None, expected: int
) -> None:
    quote = pricing.quote(SETTINGS, model, prompt, completion, group)
    assert quote.quota == expected
    assert type(quote.quota) is int


def test_quote_carries_the_factors() -> None:
    quote = pricing.quote(SETTINGS, "m-ratio", 10, 10, "vip")
    assert (quote.model_ratio, quote.completion_ratio, quote.group_ratio) == (
        Decimal("1.25"),
        Decimal("4"),
        Decimal("0.8"),
    )
    assert quote.model_price is None and quote.group == "vip"
    fixed = pricing.quote(SETTINGS, "img", 0, 0)
    assert fixed.model_price == Decimal("0.04") and fixed.model_ratio is None
    assert fixed.group == "default"


def test_unknown_model_is_refused_never_free() -> None:
    with pytest.raises(UnknownModel) as caught:
        pricing.quote(SETTINGS, "gpt-5-unlisted", 10, 10)
    assert caught.value.code == "unknown_model"


def test_unknown_group_is_an_invalid_event() -> None:
    with pytest.raises(InvalidEvent) as caught:
        pricing.quote(SETTINGS, "m-ratio", 10, 10, "platinum")
    assert caught.value.code == "invalid_event"


def test_negative_tokens_are_an_invalid_event() -> None:
    with pytest.raises(InvalidEvent):
        pricing.quote(SETTINGS, "m-ratio", -1, 10)
    with pytest.raises(InvalidEvent):
        pricing.quote(SETTINGS, "m-ratio", 1, -10)


def test_the_shipped_local_settings_price_as_documented() -> None:
    local = parse_settings((ROOT / "settings" / "local.json").read_text())
    # gpt-4o: (1200 + 300*4) * 1.25 = 3000; dall-e-3 for vip: 0.04 * 500000 * 0.8 = 16000
    assert pricing.quote(local, "gpt-4o", 1200, 300).quota == 3000
    assert pricing.quote(local, "dall-e-3", 0, 0, "vip").quota == 16000
    assert pricing.quote(local, "free-model", 500, 500).quota == 0


def test_lookups_are_derived_once_per_settings_object() -> None:
    first = pricing._table(SETTINGS)
    assert pricing._table(SETTINGS) is first
    # New settings (a price change) are picked up, not served from the old table.
    changed = make_settings(model_ratios={"m-ratio": "2"}, group_ratios={"default": "1"})
    assert pricing.quote(changed, "m-ratio", 1000, 0).quota == 2000
    assert pricing._table(changed) is not first
    assert pricing.quote(SETTINGS, "m-ratio", 1000, 0).quota == 1250
