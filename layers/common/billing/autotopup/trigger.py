"""When a debit takes the balance under the rule's threshold: one off-session payment.

Seen on the ledger's stream (billing.events), one user's entries in ledger order:
- a top-up credit of the pending order clears the marker and resets the failures;
- a debit that leaves the balance under the threshold, with the rule on, nothing pending and
  today's payments (billing time) under max_per_day, claims the marker in one conditional
  write (order id, cause, day count, last_seq), then asks Stripe for the payment. The claim
  names its cause, so a retried batch resumes that payment (same order id, same idempotency
  key) instead of starting another; entries up to last_seq never claim again;
- a refusal (decline, authentication required, no card) fails the order, clears the marker,
  counts a failure (three in a row switch the rule off) and records `topup.auto_failed` in
  the rule's outbox, in the same write; the caller puts it on the bus, then confirms it
  (`events_published`), so a crash in between re-sends the same event id.
A success waits for the payment's webhook, which credits the order like any Stripe order.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aws_lambda_powertools import Logger
from pynamodb.exceptions import UpdateError
from pynamodb.expressions.update import Action

from billing import clock
from billing.autotopup.rule import FAILURES_TO_DISABLE, AutoTopupRule, outbox_of, read
from billing.facts import EntryKind, OrderStatus
from billing.payments import AutoCharge, charge_saved_card, new_order_id, order_status
from billing.settings import load_settings

logger = Logger(child=True)

AUTO_FAILED = "topup.auto_failed"
_NAMESPACE = uuid.UUID("9d3c2a71-2c55-4c1e-8f0a-6b7e3c5d1f20")
_ATTEMPTS = 5


@dataclass(frozen=True)
class Move:
    """A ledger entry on `quota`, as auto top-up needs it."""

    entry_id: str
    seq: str
    kind: str
    delta: int
    balance_after: int
    ref: str


class RuleContention(Exception):
    pass


def on_entries(user_id: str, moves: Sequence[Move]) -> list[dict[str, Any]]:
    """Act on the user's new entries; returns the events to put on the bus (then confirm them
    with `events_published`), including any an earlier attempt left unconfirmed."""
    for _ in range(_ATTEMPTS):
        rule = read(user_id)
        if rule is None:
            return []
        if _step(rule, moves) == _IDLE:
            return outbox_of(rule)
    raise RuleContention(user_id)


_IDLE = "idle"
_CHANGED = "changed"


def _step(rule: AutoTopupRule, moves: Sequence[Move]) -> str:
    """Make one change to the rule for these entries (or report there is none to make); a
    change whose condition failed counts as one too: the caller reads the rule again."""
    if rule.pending_order_id:
        if any(m.kind == EntryKind.TOPUP and m.ref == rule.pending_order_id for m in moves):
            _succeeded(rule)
            return _CHANGED
        if not rule.pending_charged:
            _charge(rule, moves[-1].balance_after if moves else None)
            return _CHANGED
        return _CHANGED if _release_if_abandoned(rule) else _IDLE
    cause = _cause(rule, moves)
    if cause is None:
        return _IDLE
    _claim(rule, cause)
    return _CHANGED


def _today() -> str:
    return clock.now().date().isoformat()


def _cause(rule: AutoTopupRule, moves: Sequence[Move]) -> Move | None:
    """The debit that calls for a payment: the balance the entries end at is under the
    threshold, and a debit not acted on yet took it there (the newest such)."""
    if not rule.enabled or not moves or moves[-1].balance_after >= int(rule.threshold):
        return None
    used = int(rule.day_count or 0) if rule.day == _today() else 0
    if used >= int(rule.max_per_day):
        return None
    debits = [m for m in moves if m.delta < 0 and m.seq > rule.last_seq]
    return debits[-1] if debits else None


def _write(rule: AutoTopupRule, actions: list[Action]) -> bool:
    version = int(rule.version or 0)
    actions = [
        *actions,
        AutoTopupRule.version.set(version + 1),
        AutoTopupRule.updated_at.set(clock.iso()),
    ]
    try:
        rule.update(actions=actions, condition=AutoTopupRule.version == version)
    except UpdateError as exc:
        if exc.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
    return True


def _claim(rule: AutoTopupRule, move: Move) -> bool:
    today = _today()
    used = int(rule.day_count or 0) if rule.day == today else 0
    order_id = new_order_id()
    claimed = _write(
        rule,
        [
            AutoTopupRule.pending_order_id.set(order_id),
            AutoTopupRule.pending_cause.set(move.entry_id),
            AutoTopupRule.pending_since.set(clock.iso()),
            AutoTopupRule.pending_charged.set(False),
            AutoTopupRule.last_seq.set(move.seq),
            AutoTopupRule.day.set(today),
            AutoTopupRule.day_count.set(used + 1),
        ],
    )
    if claimed:
        logger.info(
            "auto top-up claimed",
            extra={"user_id": rule.user_id, "order_id": order_id, "cause": move.entry_id},
        )
    return claimed


def _charge(rule: AutoTopupRule, quota: int | None) -> bool:
    order_id = str(rule.pending_order_id)
    outcome: AutoCharge = charge_saved_card(rule.user_id, order_id, int(rule.amount))
    if outcome.accepted:
        return _write(rule, [AutoTopupRule.pending_charged.set(True)])
    return _failed(rule, order_id, outcome.code, outcome.message, quota)


def _failed(
    rule: AutoTopupRule, order_id: str, code: str, message: str, quota: int | None = None
) -> bool:
    at = clock.iso()
    failures = int(rule.failures or 0) + 1
    disable = failures >= FAILURES_TO_DISABLE
    event = {
        "id": str(uuid.uuid5(_NAMESPACE, f"{AUTO_FAILED}|{rule.user_id}|{order_id}")),
        "type": AUTO_FAILED,
        "user_id": rule.user_id,
        "quota": quota,  # the balance the triggering entries left (None: not known here)
        "order_id": order_id,
        "code": code,
        "failures": failures,
        "rule_disabled": disable,
        "created_at": at,
    }
    actions: list[Action] = [
        *_clear_marker(),
        AutoTopupRule.failures.set(failures),
        AutoTopupRule.last_failure.set(
            json.dumps({"order_id": order_id, "code": code, "message": message, "at": at})
        ),
        AutoTopupRule.outbox.set(json.dumps([*outbox_of(rule), event])),
    ]
    if disable:
        actions += [AutoTopupRule.enabled.set(False), AutoTopupRule.disabled_reason.set("failures")]
    done = _write(rule, actions)
    if done:
        logger.warning(
            "auto top-up failed",
            extra={
                "user_id": rule.user_id,
                "order_id": order_id,
                "code": code,
                "disabled": disable,
            },
        )
    return done


def _succeeded(rule: AutoTopupRule) -> bool:
    return _write(
        rule,
        [
            *_clear_marker(),
            AutoTopupRule.failures.set(0),
            AutoTopupRule.last_success.set(
                json.dumps({"order_id": rule.pending_order_id, "at": clock.iso()})
            ),
        ],
    )


def _release_if_abandoned(rule: AutoTopupRule) -> bool:
    """A payment that can no longer credit (its order failed or expired, after the order's
    lifetime) frees the marker, as a failure; True when it did. One whose order is still
    open keeps it: its webhook may still come."""
    since = rule.pending_since
    ttl = load_settings().limits.order_ttl_seconds
    if since is None or clock.parse_iso(since) + timedelta(seconds=ttl) > clock.now():
        return False
    if order_status(str(rule.pending_order_id)) not in (
        OrderStatus.FAILED,
        OrderStatus.EXPIRED,
        None,
    ):
        return False
    _failed(rule, str(rule.pending_order_id), "abandoned", "The payment never completed.")
    return True


def _clear_marker() -> list[Action]:
    return [
        AutoTopupRule.pending_order_id.remove(),
        AutoTopupRule.pending_cause.remove(),
        AutoTopupRule.pending_since.remove(),
        AutoTopupRule.pending_charged.remove(),
    ]


def events_published(user_id: str, event_ids: Sequence[str]) -> None:
    """The events are on the bus: drop them from the outbox."""
    for _ in range(_ATTEMPTS):
        rule = read(user_id)
        if rule is None:
            return
        left = [e for e in outbox_of(rule) if str(e.get("id")) not in set(event_ids)]
        if len(left) == len(outbox_of(rule)):
            return
        if _write(
            rule,
            [AutoTopupRule.outbox.set(json.dumps(left)) if left else AutoTopupRule.outbox.remove()],
        ):
            return
    raise RuleContention(user_id)
