"""The Stripe customer of each user: one per user, so a card saved at checkout can be charged
off-session later.

Created on the first checkout with save_card (Stripe idempotency key per user), then stored
under attribute_not_exists: when two first checkouts race, both use the stored one.
"""

from __future__ import annotations

import os

from pynamodb.attributes import UnicodeAttribute
from pynamodb.exceptions import DoesNotExist, PutError
from pynamodb.models import Model

from billing import clock

_REGION = os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


class StripeCustomer(Model):
    class Meta:
        table_name = os.environ.get("STRIPE_CUSTOMERS_TABLE", "")
        region = _REGION

    user_id = UnicodeAttribute(hash_key=True)
    customer_id = UnicodeAttribute()
    created_at = UnicodeAttribute()


def find(user_id: str) -> str | None:
    try:
        return str(StripeCustomer.get(user_id, consistent_read=True).customer_id)
    except DoesNotExist:
        return None


def store(user_id: str, customer_id: str) -> str:
    """Keep `customer_id` as the user's customer unless one is kept; returns the kept one."""
    try:
        StripeCustomer(user_id=user_id, customer_id=customer_id, created_at=clock.iso()).save(
            condition=StripeCustomer.user_id.does_not_exist()
        )
    except PutError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise
        kept = find(user_id)
        if kept is None:
            raise
        return kept
    return customer_id
