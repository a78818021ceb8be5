"""Top-up options and a user's orders."""

from typing import Literal

from pydantic import Field

from billing.api_models import _Body
from billing.api_models_orders import Order


class Product(_Body):
    product_id: str
    name: str
    price: str
    currency: str
    quota: int


class Method(_Body):
    id: Literal["stripe", "epay", "creem", "waffo"]
    name: str
    currency: str
    unit_price: str
    channels: list[str] | None = None
    products: list[Product] | None = None


class TopupOptions(_Body):
    quota_per_unit: int
    amount_options: list[int]
    min_topup: int
    max_topup: int
    discounts: dict[str, str]
    methods: list[Method]
    referral_rebate_percent: str
    referral_min_transfer: int = Field(description="The least quota /referral/transfer moves.")


class OrderPage(_Body):
    items: list[Order]
    next_cursor: str | None
