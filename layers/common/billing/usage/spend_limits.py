"""Spend limits of an account: read (with each window's spend), set and delete.

The definitions live on the account item (`limits`), which metering reads anyway, so a limit
costs no extra read per charge. A change bumps the account's version (conditional on the
version read): a metering chunk decided against the old limits then fails its own version
condition and is decided again, so no charge slips past a limit set before it committed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pynamodb.exceptions import UpdateError

from billing import clock, ledger, retry
from billing.errors import InvalidRequest
from billing.models import Account, LimitCounter, limit_window_key
from billing.usage import limits

MAX_ATTEMPTS = 10


def list_limits(user_id: str, now: datetime | None = None) -> dict[str, Any]:
    """The account's limits, each with the spend of its current window."""
    moment = now or clock.now()
    account = ledger.read_account(user_id)
    return {"limits": _render(user_id, limits.stored_limits(account.limits), moment)}


def _render(
    user_id: str, defined: dict[str, limits.Limit], moment: datetime
) -> list[dict[str, Any]]:
    keys = {scope: limits.counter_key(scope, lim.period, moment) for scope, lim in defined.items()}
    spent: dict[str, int] = {}
    if keys:
        windows = {limit_window_key(user_id, key): key for key in keys.values()}
        for item in LimitCounter.batch_get(list(windows), consistent_read=True):
            spent[windows[item.window_key]] = int(item.spent)
    ordered = sorted(defined, key=lambda scope: (scope != limits.ACCOUNT_SCOPE, scope))
    return [
        limits.render_limit(defined[scope], spent.get(keys[scope], 0), moment) for scope in ordered
    ]


def put_limit(user_id: str, scope: str, max_quota: Any, period: Any) -> dict[str, Any]:
    """Set (create or replace) the limit of a scope; the limit as GET /limits shows it."""
    limit = limits.parse_limit(scope, max_quota, period)
    stored = {"max_quota": limit.max_quota, "period": limit.period, "updated_at": clock.iso()}

    def change(current: dict[str, Any]) -> dict[str, Any]:
        if limit.scope not in current and len(current) >= limits.MAX_LIMITS:
            raise InvalidRequest(f"An account has at most {limits.MAX_LIMITS} limits.")
        return {**current, limit.scope: stored}

    _update(user_id, change)
    moment = clock.now()
    (shown,) = _render(user_id, {limit.scope: limit}, moment)
    return shown


def delete_limit(user_id: str, scope: str) -> dict[str, Any]:
    """Remove the limit of a scope (its window counters stay until their TTL)."""
    scope = limits.parse_scope(scope)
    found = False

    def change(current: dict[str, Any]) -> dict[str, Any]:
        nonlocal found
        found = scope in current
        return {name: value for name, value in current.items() if name != scope}

    _update(user_id, change)
    return {"scope": scope, "deleted": found}


def _update(user_id: str, change: Any) -> None:
    for attempt in range(MAX_ATTEMPTS):
        account = ledger.read_account(user_id)
        current = _plain(account.limits)
        new = change(current)
        version = int(account.version)
        try:
            account.update(
                actions=[
                    Account.limits.set(new),
                    Account.version.set(version + 1),
                    Account.updated_at.set(clock.iso()),
                ],
                condition=Account.version == version,
            )
            return
        except UpdateError as exc:
            if getattr(exc, "cause_response_code", None) != "ConditionalCheckFailedException":
                raise
        # A ledger transaction won the race for the account: re-read and try again.
        retry.pause(attempt, base=0.01, cap=0.2)
    raise ledger.LedgerContention("the account kept changing; try again")


def _plain(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    values = raw.as_dict() if hasattr(raw, "as_dict") else dict(raw)
    return {
        str(scope): {
            "max_quota": int(item["max_quota"]),
            "period": str(item["period"]),
            "updated_at": item.get("updated_at"),
        }
        for scope, item in (
            (s, i.as_dict() if hasattr(i, "as_dict") else dict(i)) for s, i in values.items()
        )
    }
