"""The account as GET /account and the admin routes show it: its balances and, from
billing.grant_history, its active grants and what expires soon."""

from __future__ import annotations

from typing import Any

from billing.grant_history import account_view
from billing.models import Account


def render_account(account: Account) -> dict[str, Any]:
    return {
        "user_id": account.user_id,
        "quota": int(account.quota),
        "used_quota": int(account.used_quota),
        "request_count": int(account.request_count),
        "held_quota": int(account.held_quota),
        "aff_code": account.aff_code,
        "aff_quota": int(account.aff_quota),
        "aff_history_quota": int(account.aff_history_quota),
        "aff_count": int(account.aff_count),
        "inviter_id": account.inviter_id,
        "status": account.status,
        "created_at": account.created_at,
        **account_view(account),
    }
