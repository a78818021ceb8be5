"""An order (a top-up), as its owner and the admins see it."""

from pydantic import Field

from billing.api_models import _Body
from billing.facts import OrderStatus


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
