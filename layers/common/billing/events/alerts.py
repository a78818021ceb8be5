"""The user's low-balance threshold (GET/PUT /account/alerts)."""

from __future__ import annotations

from typing import Any

from pynamodb.expressions.update import Action

from billing import accounts, clock
from billing.errors import InvalidRequest
from billing.events import state

MAX_THRESHOLD = 10**15  # far above any real balance; keeps the number a plain integer


def render(threshold: int | None, quota: int) -> dict[str, Any]:
    return {
        "low_balance_threshold": threshold,
        "quota": quota,
        "below_threshold": threshold is not None and quota < threshold,
    }


def get_alerts(user_id: str) -> dict[str, Any]:
    account = accounts.get_account(user_id)
    current = state.read(user_id)
    threshold = current.low_balance_threshold
    return render(None if threshold is None else int(threshold), int(account.quota))


def set_alerts(user_id: str, threshold: int | None) -> dict[str, Any]:
    """Set (or with None, remove) the threshold; a new threshold is armed, so the next change
    that takes the balance from at or above it to below it alerts."""
    if threshold is not None and not 0 <= threshold <= MAX_THRESHOLD:
        raise InvalidRequest(f"low_balance_threshold must be null or 0..{MAX_THRESHOLD}.")
    account = accounts.get_account(user_id)
    actions: list[Action] = [
        state.AlertState.low_armed.set(True),
        state.AlertState.version.add(1),
        state.AlertState.updated_at.set(clock.iso()),
    ]
    if threshold is None:
        actions.append(state.AlertState.low_balance_threshold.remove())
    else:
        actions.append(state.AlertState.low_balance_threshold.set(threshold))
    state.AlertState(user_id=user_id).update(actions=actions)
    return render(threshold, int(account.quota))
