"""Folding a batch of ledger stream records into billing events, exactly once per cause.

Per user, in stream order:
1. an outbox left by an earlier attempt (events recorded, maybe not put) is put again, with
   the same ids, then cleared;
2. the entries after `last_seq` are folded (billing.events.crossing); if that changes the
   arming or causes events, the new arming, `last_seq` and the events (the outbox) are written
   in one conditional write BEFORE anything is put on the bus; then the events are put and the
   outbox cleared. A crash before the put leaves the outbox for the retry (step 1); a crash
   after it re-puts the same ids, never new ones; a retried batch folds nothing twice;
3. auto top-up sees the same entries (billing.autotopup), and its failure events go out the
   same way from its own outbox.

A user whose processing fails reports its first record, so the stream retries from there
(ReportBatchItemFailures); the other users' records of the retry are folded again, which
changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from aws_lambda_powertools import Logger
from pynamodb.exceptions import PutError, UpdateError
from pynamodb.expressions.update import Action

from billing import clock
from billing.autotopup import Move, events_published, on_entries
from billing.events import crossing, publisher, records, state

logger = Logger(child=True)

_ATTEMPTS = 5


class StateContention(Exception):
    """The user's alert item kept changing under us; the batch is retried."""


def process_batch(stream_records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Process one batch; returns the sequence numbers to retry from (one per failed user)."""
    failed: list[str] = []
    for user_id, entries in records.by_user(stream_records).items():
        try:
            _process_user(user_id, entries)
            _auto_topup(user_id, entries)
        except Exception:
            logger.exception(
                "billing events of a user failed; the stream retries from its first record",
                extra={"user_id": user_id, "records": len(entries)},
            )
            failed.append(entries[0].sequence_number)
    return failed


def _process_user(user_id: str, entries: Sequence[crossing.Entry]) -> None:
    for _ in range(_ATTEMPTS):
        current = state.read(user_id)
        leftover = state.outbox_of(current)
        if leftover:
            publisher.publish(leftover)
            _clear_outbox(current)
            continue
        fresh = [entry for entry in entries if entry.seq > current.last_seq]
        if not fresh:
            return
        threshold = current.low_balance_threshold
        before = crossing.Arming(bool(current.low_armed), bool(current.depleted_armed))
        after, events = crossing.fold(before, None if threshold is None else int(threshold), fresh)
        if after == before and not events:
            return  # nothing to record: a retry folds the same entries to the same nothing
        if not _record(current, after, fresh[-1].seq, events):
            continue  # the item changed (a new threshold): fold again from what it is now
        if events:
            publisher.publish(events)
            current.outbox = json.dumps(events)
            _clear_outbox(current)
            logger.info(
                "billing events published",
                extra={"user_id": user_id, "types": [e["type"] for e in events]},
            )
        return
    raise StateContention(user_id)


def _record(
    current: state.AlertState, arming: crossing.Arming, last_seq: str, events: list[dict[str, Any]]
) -> bool:
    version = int(current.version or 0)
    condition = (
        state.AlertState.version == version
        if version
        else state.AlertState.user_id.does_not_exist()
    )
    actions: list[Action] = [
        state.AlertState.low_armed.set(arming.low_armed),
        state.AlertState.depleted_armed.set(arming.depleted_armed),
        state.AlertState.last_seq.set(last_seq),
        state.AlertState.version.set(version + 1),
        state.AlertState.updated_at.set(clock.iso()),
    ]
    if events:
        actions.append(state.AlertState.outbox.set(json.dumps(events)))
    try:
        state.AlertState(user_id=current.user_id).update(actions=actions, condition=condition)
    except (UpdateError, PutError) as exc:
        if exc.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
    return True


def _clear_outbox(current: state.AlertState) -> None:
    """Remove exactly the outbox that was put (a threshold change meanwhile does not matter)."""
    try:
        state.AlertState(user_id=current.user_id).update(
            actions=[state.AlertState.outbox.remove()],
            condition=state.AlertState.outbox == current.outbox,
        )
    except UpdateError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise


def _auto_topup(user_id: str, entries: Sequence[crossing.Entry]) -> None:
    moves = [
        Move(
            entry_id=e.entry_id,
            seq=e.seq,
            kind=e.kind,
            delta=e.delta,
            balance_after=e.balance_after,
            ref=e.ref,
        )
        for e in entries
        if e.balance == "quota"
    ]
    if not moves:
        return
    outgoing = on_entries(user_id, moves)
    if outgoing:
        publisher.publish(outgoing)
        events_published(user_id, [str(event["id"]) for event in outgoing])
        logger.info(
            "auto top-up events published",
            extra={"user_id": user_id, "types": [e["type"] for e in outgoing]},
        )
