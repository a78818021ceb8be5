"""Top-up options, orders and the providers' webhook acknowledgement."""

from typing import Literal

from pydantic import Field

from billing.api_models import _Body
from billing.facts import OrderStatus


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


class Order(_Body):
    order_id: str
    method: str
    amount: int
    pay_money: str = Field(description="Decimal string in the currency's minor unit.")
    currency: str
    quota: int
    status: OrderStatus
    refunded_money: str = Field(description="Decimal string: what refunds returned so far.")
    pay_url: str | None = None
    channel: str | None = None
    product_id: str | None = None
    created_at: str
    paid_at: str | None
    expires_at: str | None = Field(default=None, description="A pending order's deadline.")
    failure_reason: str | None = Field(
        default=None, description="Why it failed, expired or is disputed (ttl, mismatch:...)."
    )
    auto: bool | None = Field(default=None, description="true: an auto top-up (off-session).")
    save_card: bool | None = Field(default=None, description="true: the card is kept.")


class OrderPage(_Body):
    items: list[Order]
    next_cursor: str | None


class WebhookAck(_Body):
    """The provider's acknowledgement: Stripe and Creem get {"received": true}, Waffo its
    signed {"message": "success"}."""

    received: bool | None = None
    message: str | None = None
