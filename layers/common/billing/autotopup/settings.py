"""The rule as its owner sees and sets it (GET/PUT /account/auto-topup)."""

from __future__ import annotations

from typing import Any

from pynamodb.expressions.update import Action

from billing import accounts, clock
from billing.autotopup.rule import (
    DEFAULT_MAX_PER_DAY,
    AutoTopupRule,
    loads,
    read,
    state_of,
)
from billing.errors import DomainError, InvalidRequest
from billing.facts import ErrorCode
from billing.payments import auto_price, saved_card

MAX_THRESHOLD = 10**15
MAX_PER_DAY = 24


class NoSavedCard(DomainError):
    code = ErrorCode.NO_SAVED_CARD.value
    status = 400
    message = "Save a card first: top up once with save_card."


def render(rule: AutoTopupRule | None, card: dict[str, Any] | None) -> dict[str, Any]:
    if rule is None:
        return {"enabled": False, "state": "off", "saved_card": card}
    rendered: dict[str, Any] = {
        "enabled": bool(rule.enabled),
        "threshold": int(rule.threshold),
        "amount": int(rule.amount),
        "method": rule.method,
        "max_per_day": int(rule.max_per_day),
        "state": state_of(rule),
        "failures": int(rule.failures or 0),
        "last_failure": loads(rule.last_failure),
        "last_success": loads(rule.last_success),
        "pending_order_id": rule.pending_order_id,
        "today_count": int(rule.day_count or 0)
        if rule.day == clock.now().date().isoformat()
        else 0,
        "saved_card": card,
    }
    return rendered


def get_rule(user_id: str) -> dict[str, Any]:
    accounts.get_account(user_id)
    return render(read(user_id), saved_card(user_id))


def put_rule(
    user_id: str,
    *,
    enabled: bool,
    threshold: int,
    amount: int,
    method: str,
    max_per_day: int | None,
) -> dict[str, Any]:
    """Set the rule. Enabling needs a saved card (400 no_saved_card) and starts afresh: the
    failures in a row are forgotten. The marker and the day count are kept (a payment in
    flight stays the only one; today's payments still count)."""
    if method != "stripe":
        raise InvalidRequest("Auto top-up pays with a saved Stripe card: method must be stripe.")
    if not 0 <= threshold <= MAX_THRESHOLD:
        raise InvalidRequest(f"threshold must be 0..{MAX_THRESHOLD}.")
    per_day = DEFAULT_MAX_PER_DAY if max_per_day is None else max_per_day
    if not 1 <= per_day <= MAX_PER_DAY:
        raise InvalidRequest(f"max_per_day must be 1..{MAX_PER_DAY}.")
    auto_price(amount)  # InvalidAmount / MethodUnavailable, before anything is written
    accounts.get_account(user_id)
    card = saved_card(user_id)
    if enabled and card is None:
        raise NoSavedCard()
    actions: list[Action] = [
        AutoTopupRule.enabled.set(enabled),
        AutoTopupRule.threshold.set(threshold),
        AutoTopupRule.amount.set(amount),
        AutoTopupRule.method.set(method),
        AutoTopupRule.max_per_day.set(per_day),
        AutoTopupRule.version.add(1),
        AutoTopupRule.updated_at.set(clock.iso()),
    ]
    if enabled:
        actions += [AutoTopupRule.failures.set(0), AutoTopupRule.disabled_reason.remove()]
    rule = AutoTopupRule(user_id=user_id)
    rule.update(actions=actions)
    return render(rule, card)
