"""A redemption."""

from billing.api_models import _Body


class Redeemed(_Body):
    quota_added: int
    quota: int
