"""Referral: accounts created with an inviter's referral code, the rebate (and first-order
bonuses) on invited users' purchases with its clawback on refunds, and the transfer of reward
quota to the balance.

This is the package's face: the names other packages may use. Everything else is private.
"""

from billing.referral.rewards import clawback_changes, credit_changes, rebate_for, transfer
from billing.referral.signup import create_account, find_inviter

__all__ = [
    "clawback_changes",
    "create_account",
    "credit_changes",
    "find_inviter",
    "rebate_for",
    "transfer",
]
