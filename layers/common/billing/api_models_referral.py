"""Referral rewards moved to the balance."""

from billing.api_models import _Body


class Transferred(_Body):
    aff_quota: int
    quota: int
