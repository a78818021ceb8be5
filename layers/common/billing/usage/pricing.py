"""The price of usage in quota, exactly as API.md states it.

Ratio-priced model:  ceil((prompt + completion * completion_ratio) * model_ratio * group_ratio)
Fixed-price model:   ceil(model_price * quota_per_unit * group_ratio)

Any usage that is not free costs at least 1; a ratio (or price) of 0 makes a model free. A
model with neither a ratio nor a price is unknown and refused: it is never metered as free.
Arithmetic is Decimal throughout (settings hold Decimals, tokens are ints); the result is an
int. The per-model and per-group lookups are derived once per settings object.
"""

from __future__ import annotations

import decimal
from decimal import ROUND_CEILING, Decimal
from typing import NamedTuple

from billing.errors import InvalidEvent, UnknownModel
from billing.settings import Settings

# Enough digits that no product of (bounded) token counts and settings ratios is rounded.
_CONTEXT = decimal.Context(prec=100, rounding=ROUND_CEILING)
_ZERO = Decimal(0)


class ModelPricing(NamedTuple):
    """How one model is priced: by ratio, or at a fixed price per request."""

    model_ratio: Decimal | None
    completion_ratio: Decimal | None
    model_price: Decimal | None


class Quote(NamedTuple):
    """The price of one usage and the factors it came from (kept on the usage record)."""

    quota: int
    model: str
    group: str
    group_ratio: Decimal
    model_ratio: Decimal | None
    completion_ratio: Decimal | None
    model_price: Decimal | None


class _Table(NamedTuple):
    quota_per_unit: Decimal
    models: dict[str, ModelPricing]
    groups: dict[str, Decimal]
    default_group: str


_table_cache: tuple[Settings, _Table] | None = None


def _table(settings: Settings) -> _Table:
    """The lookups derived from one settings object (rebuilt when the settings change)."""
    global _table_cache
    if _table_cache is not None and _table_cache[0] is settings:
        return _table_cache[1]
    pricing = settings.pricing
    models: dict[str, ModelPricing] = {
        model: ModelPricing(
            model_ratio=ratio,
            completion_ratio=pricing.completion_ratios.get(model, pricing.default_completion_ratio),
            model_price=None,
        )
        for model, ratio in pricing.model_ratios.items()
    }
    # A fixed price wins over a ratio for a model that has both (billed per call).
    for model, price in pricing.model_prices.items():
        models[model] = ModelPricing(model_ratio=None, completion_ratio=None, model_price=price)
    table = _Table(
        quota_per_unit=Decimal(settings.quota_per_unit),
        models=models,
        groups=dict(pricing.group_ratios),
        default_group=pricing.default_group,
    )
    _table_cache = (settings, table)
    return table


def model_pricing(settings: Settings, model: str) -> ModelPricing:
    try:
        return _table(settings).models[model]
    except KeyError:
        raise UnknownModel(f"The model {model!r} has no price.") from None


def group_ratio(settings: Settings, group: str | None) -> tuple[str, Decimal]:
    """The group (the default one when absent) and its ratio; an unknown group is invalid."""
    table = _table(settings)
    name = table.default_group if group is None else group
    try:
        return name, table.groups[name]
    except KeyError:
        raise InvalidEvent(f"The group {name!r} does not exist.") from None


def _ceil(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING, context=_CONTEXT))


def quote(
    settings: Settings,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    group: str | None = None,
) -> Quote:
    """The quota that usage costs. UnknownModel, InvalidEvent (unknown group, bad tokens)."""
    if prompt_tokens < 0 or completion_tokens < 0:
        raise InvalidEvent("Token counts cannot be negative.")
    pricing = model_pricing(settings, model)
    group_name, g_ratio = group_ratio(settings, group)
    table = _table(settings)
    ctx = _CONTEXT
    if pricing.model_price is not None:
        multiplier = ctx.multiply(pricing.model_price, g_ratio)
        raw = ctx.multiply(ctx.multiply(pricing.model_price, table.quota_per_unit), g_ratio)
    else:
        assert pricing.model_ratio is not None and pricing.completion_ratio is not None
        multiplier = ctx.multiply(pricing.model_ratio, g_ratio)
        tokens = ctx.add(
            Decimal(prompt_tokens),
            ctx.multiply(Decimal(completion_tokens), pricing.completion_ratio),
        )
        raw = ctx.multiply(ctx.multiply(tokens, pricing.model_ratio), g_ratio)
    # A zero ratio or price (model or group) is free; anything else costs at least 1.
    amount = 0 if multiplier == _ZERO else max(1, _ceil(raw))
    return Quote(
        quota=amount,
        model=model,
        group=group_name,
        group_ratio=g_ratio,
        model_ratio=pricing.model_ratio,
        completion_ratio=pricing.completion_ratio,
        model_price=pricing.model_price,
    )
