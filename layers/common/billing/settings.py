"""The one JSON settings document: prices, options, ratios, referral and limits.

In AWS it lives in SSM Parameter Store (SETTINGS_PARAMETER), read through Powertools
parameters with a cache; tests and tools may point SETTINGS_FILE at a file instead. A bad
document raises SettingsError naming the field: we never fall back to defaults silently.
"""

import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from billing import money, restore
from billing.errors import SettingsError

MethodId = Literal["stripe", "epay", "creem", "waffo"]
PositiveDecimal = Annotated[Decimal, Field(gt=0)]
NonNegativeDecimal = Annotated[Decimal, Field(ge=0)]


class _Strict(BaseModel):
    # defer_build: built when the settings are first loaded, not at import (cold start).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Product(_Strict):
    product_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    price: PositiveDecimal
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    quota: int = Field(gt=0)


class PaymentMethod(_Strict):
    name: str = Field(min_length=1)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    unit_price: PositiveDecimal
    channels: list[str] = Field(default_factory=list)
    products: list[Product] = Field(default_factory=list)
    test_mode: bool = True
    enabled: bool = True


class Topup(_Strict):
    amount_options: list[Annotated[int, Field(gt=0)]] = Field(min_length=1)
    min_topup: int = Field(gt=0)
    max_topup: int = Field(gt=0)
    # amount (as a string key, JSON objects have no int keys) -> price multiplier
    discounts: dict[str, Annotated[Decimal, Field(gt=0, le=1)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.min_topup > self.max_topup:
            raise ValueError("min_topup is above max_topup")
        for key in self.discounts:
            if not key.isdigit():
                raise ValueError(f"discounts key {key!r} is not a whole amount")
        for amount in self.amount_options:
            if not self.min_topup <= amount <= self.max_topup:
                raise ValueError(f"amount option {amount} is outside min_topup..max_topup")
        return self

    def discount_for(self, amount: int) -> Decimal:
        return self.discounts.get(str(amount), Decimal(1))


class Urls(_Strict):
    # Templates: {console} is CONSOLE_URL, {order_id} the order.
    success_url: str = "{console}/console/topup?order={order_id}"
    cancel_url: str = "{console}/console/topup?order={order_id}&cancelled=1"


class Pricing(_Strict):
    model_ratios: dict[str, NonNegativeDecimal] = Field(default_factory=dict)
    completion_ratios: dict[str, NonNegativeDecimal] = Field(default_factory=dict)
    default_completion_ratio: NonNegativeDecimal = Decimal(1)
    # fixed price per request in top-up units (USD), for models billed per call
    model_prices: dict[str, NonNegativeDecimal] = Field(default_factory=dict)
    group_ratios: dict[str, NonNegativeDecimal] = Field(
        default_factory=lambda: {"default": Decimal(1)}
    )
    default_group: str = "default"

    @model_validator(mode="after")
    def _default_group_known(self) -> Self:
        if self.default_group not in self.group_ratios:
            raise ValueError(f"default_group {self.default_group!r} has no group ratio")
        return self


class Referral(_Strict):
    rebate_percent: Annotated[Decimal, Field(ge=0, le=100)] = Decimal(0)
    min_transfer: int = Field(default=500000, gt=0)
    invitee_bonus: int = Field(default=0, ge=0)
    inviter_bonus: int = Field(default=0, ge=0)


class Limits(_Strict):
    redeem_max_failures: int = Field(default=10, gt=0)
    redeem_window_seconds: int = Field(default=600, gt=0)
    hold_ttl_seconds: int = Field(default=900, gt=0)
    order_ttl_seconds: int = Field(default=86400, gt=0)
    max_batch_events: int = Field(default=500, gt=0, le=500)


class Usage(_Strict):
    # Shards of each user's usage index (by_user_shard): one index partition takes about
    # 1000 write units a second and its sort key (created_at) only grows, so DynamoDB cannot
    # split it; bench/capacity.py sizes this for one account at 25,000 events/s. Raise it
    # only: the readers query shards 0..N-1, so records written to a higher shard under a
    # larger N would drop out of GET /usage if it were lowered.
    user_shards: int = Field(default=32, ge=1, le=256)


class Settings(_Strict):
    # default_factory: no section model is built (and validated) when this class is made.
    quota_per_unit: int = Field(default=500000, gt=0)
    topup: Topup
    methods: dict[MethodId, PaymentMethod]
    urls: Urls = Field(default_factory=Urls)
    pricing: Pricing = Field(default_factory=Pricing)
    referral: Referral = Field(default_factory=Referral)
    limits: Limits = Field(default_factory=Limits)
    usage: Usage = Field(default_factory=Usage)

    @model_validator(mode="after")
    def _currencies_the_providers_take(self) -> Self:
        """A method whose provider cannot charge in its currency (or in a product's) would
        take orders no one can pay, or pay the wrong amount: refuse the document."""
        for method, config in self.methods.items():
            priced = [("currency", config.currency)] + [
                (f"products.{product.product_id}.currency", product.currency)
                for product in config.products
            ]
            for field, currency in priced:
                if not money.supports(method, currency):
                    raise ValueError(f"methods.{method}.{field}: {method} cannot take {currency}")
        return self


def parse_settings(raw: str | bytes) -> Settings:
    """Validate a settings document; errors name the offending field."""
    try:
        data = json.loads(raw, parse_float=Decimal)
    except ValueError as exc:
        raise SettingsError(f"settings are not valid JSON: {exc}") from exc
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from exc


_cache: tuple[str, Settings] | None = None


def load_settings() -> Settings:
    """The current settings (SSM with a short cache in AWS, or SETTINGS_FILE)."""
    global _cache
    path = os.environ.get("SETTINGS_FILE")
    if path:
        raw = Path(path).read_text(encoding="utf-8")
    else:
        name = os.environ.get("SETTINGS_PARAMETER")
        if not name:
            raise SettingsError("neither SETTINGS_PARAMETER nor SETTINGS_FILE is set")
        from aws_lambda_powertools.utilities import parameters

        max_age = int(os.environ.get("SETTINGS_MAX_AGE", "60"))
        raw = str(parameters.get_parameter(name, max_age=max_age))
    if _cache is not None and _cache[0] == raw:
        return _cache[1]
    settings = parse_settings(raw)
    _cache = (raw, settings)
    return settings


@restore.before_snapshot
def _build_models() -> None:
    # With SnapStart the snapshot holds these built (defer_build leaves them to first use).
    restore.build_models(_Strict)
