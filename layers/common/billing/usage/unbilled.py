"""Unbilled usage: usage that happened but could not be billed, kept for an admin.

A `settle` or `charge` refused with `unknown_model` (no price in the settings) or
`account_not_found` reports usage that already happened: dropping it would lose money. It is
kept as an item of the unbilled-usage table (its own table: it is in no account's history
and moves no balance), keyed by request_id, so a repeat of the event keeps it once. An admin
lists the open items (newest first) and re-meters one: it is then metered now, with the
current settings, as a `settle` (the usage happened, so it is billed even below zero, over
any hold the request still has), and the item is closed with the result. The item keeps the
event's `key_id`, so the re-metered usage counts in that key's spend-limit windows (as a
settle: it may take a window above its limit) and is listed under the key.

Exactly once: the usage record of the request_id (billing.usage.metering) decides whether
the usage is billed, so any number of concurrent re-meters (or a late delivery of the event
itself) bill it once; the item is closed afterwards, under a status condition, with the
result that billed it. A re-meter that finds the usage billed already only closes the item.

The open items carry a listing shard (a sparse index over a few shards: a burst of
unbillable usage, e.g. a model missing from the settings, does not land on one index key);
a page merges the shards newest first.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

from pynamodb.attributes import MapAttribute, NumberAttribute, UnicodeAttribute
from pynamodb.exceptions import DoesNotExist, PutError, UpdateError
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model

from billing import clock
from billing.errors import AccountNotFound, DomainError, InvalidRequest, NotFound, UnknownModel
from billing.facts import ErrorCode
from billing.pagination import decode_cursor, encode_cursor
from billing.settings import Settings
from billing.usage import metering
from billing.usage.metering import Action, Result, UsageEvent

OPEN_SHARDS = 4
SHARDS = tuple(f"u#{number}" for number in range(OPEN_SHARDS))
# Refusals of usage that happened and may be billable later (settings fixed, account made).
KEPT_ERRORS = frozenset({UnknownModel.code, AccountNotFound.code})
KEPT_ACTIONS = frozenset({Action.SETTLE, Action.CHARGE})

UNBILLED = "unbilled"
REMETERED = "remetered"

_REGION = os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


class OpenUnbilled(GlobalSecondaryIndex["UnbilledUsage"]):
    """Sparse: only open items carry open_shard."""

    class Meta:
        index_name = "open_by_time"
        projection = AllProjection()

    open_shard = UnicodeAttribute(hash_key=True)
    created_at = UnicodeAttribute(range_key=True)


class UnbilledUsage(Model):
    """One request's usage that could not be billed, and what became of it."""

    class Meta:
        table_name = os.environ.get("UNBILLED_USAGE_TABLE", "")
        region = _REGION

    request_id = UnicodeAttribute(hash_key=True)
    user_id = UnicodeAttribute()
    action = UnicodeAttribute()  # the event as it came: settle | charge
    model = UnicodeAttribute()
    group = UnicodeAttribute(null=True)
    key_id = UnicodeAttribute(null=True)  # the API key served: its spend limit and usage
    prompt_tokens = NumberAttribute()
    completion_tokens = NumberAttribute()
    error = UnicodeAttribute()  # why it could not be billed: unknown_model | account_not_found
    message = UnicodeAttribute(default="")
    status = UnicodeAttribute(default=UNBILLED)  # unbilled | remetered
    open_shard = UnicodeAttribute(null=True)  # while unbilled
    attempts = NumberAttribute(default=0)  # re-meters that could not bill it yet
    last_error = UnicodeAttribute(null=True)
    result = MapAttribute[str, Any](null=True)  # the result that billed it
    remetered_by = UnicodeAttribute(null=True)
    remetered_at = UnicodeAttribute(null=True)
    created_at = UnicodeAttribute()
    updated_at = UnicodeAttribute()

    open_by_time = OpenUnbilled()


class RemeterFailed(DomainError):
    code = ErrorCode.REMETER_FAILED.value
    status = 409
    message = "The usage still cannot be billed."


class TryAgain(DomainError):
    code = ErrorCode.TRY_AGAIN.value
    status = 503
    message = "The usage could not be metered now; try again."


def open_shard(request_id: str) -> str:
    number = int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) % OPEN_SHARDS
    return SHARDS[number]


# ---------------------------------------------------------------- keeping


class Kept(NamedTuple):
    """The results, with each kept refusal marked `"unbilled": true`; None where the item
    could not be written now (the event must come again)."""

    results: list[Result | None]
    errors: Sequence[Exception] = ()


def _is_kept(event: UsageEvent, result: Result | None) -> bool:
    return (
        result is not None
        and result["status"] == metering.Status.REJECTED
        and result.get("error") in KEPT_ERRORS
        and event.action in KEPT_ACTIONS
    )


def keep(
    events: Sequence[UsageEvent],
    results: Sequence[Result | None],
    *,
    deadline: float | None = None,
) -> Kept:
    """Keep the usage of every settle or charge refused as unbillable."""
    out = list(results)
    wanted = [i for i, (e, r) in enumerate(zip(events, results, strict=True)) if _is_kept(e, r)]
    if not wanted:
        return Kept(out)
    if metering.past(deadline):
        for index in wanted:
            out[index] = None
        return Kept(out)
    errors: list[Exception] = []
    try:
        records = metering.read_records([events[i].request_id for i in wanted])
    except metering.TRANSIENT_ERRORS as exc:
        for index in wanted:
            out[index] = None
        return Kept(out, [exc])
    at = clock.iso()
    for index in wanted:
        event, refusal = events[index], out[index]
        assert refusal is not None
        record = records.get(event.request_id)
        if record is not None:
            repeat = metering.answered(record, event)
            if repeat is not None:
                out[index] = repeat  # this very event was metered before: a duplicate
                continue
            if record.user_id != event.user_id or record.status in (
                metering.Status.CHARGED,
                metering.Status.SETTLED,
            ):
                continue  # billed under this request_id already, or not this user's
        if metering.past(deadline):
            out[index] = None
            continue
        try:
            _put(event, refusal, at)
        except PutError as exc:
            if not _condition_failed(exc):  # kept before: a repeat
                errors.append(exc)
                out[index] = None
                continue
        out[index] = {**refusal, "unbilled": True}
    return Kept(out, errors)


def _put(event: UsageEvent, refusal: Result, at: str) -> None:
    UnbilledUsage(
        request_id=event.request_id,
        user_id=event.user_id,
        action=event.action.value,
        model=event.model,
        group=event.group,
        key_id=event.key_id,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        error=str(refusal["error"]),
        message=str(refusal.get("message") or ""),
        status=UNBILLED,
        open_shard=open_shard(event.request_id),
        created_at=at,
        updated_at=at,
    ).save(condition=UnbilledUsage.request_id.does_not_exist())


def _condition_failed(exc: PutError | UpdateError) -> bool:
    return getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException"


# ---------------------------------------------------------------- the admin's view


def render(item: UnbilledUsage) -> dict[str, Any]:
    return {
        "request_id": item.request_id,
        "user_id": item.user_id,
        "action": item.action,
        "model": item.model,
        "group": item.group,
        "key_id": item.key_id,
        "prompt_tokens": int(item.prompt_tokens),
        "completion_tokens": int(item.completion_tokens),
        "error": item.error,
        "message": item.message,
        "status": item.status,
        "attempts": int(item.attempts),
        "last_error": item.last_error,
        "result": None if item.result is None else metering.plain_json(item.result),
        "remetered_by": item.remetered_by,
        "remetered_at": item.remetered_at,
        "created_at": item.created_at,
        "updated_at": item.updated_at,
    }


def _positions(cursor: str | None) -> dict[str, list[str] | None]:
    """Where each shard's next page starts: [] from its top, [created_at, request_id] after
    that item, None when it has nothing more."""
    if not cursor:
        return {shard: [] for shard in SHARDS}
    value = decode_cursor(cursor)
    shards = value.get("unbilled") if isinstance(value, dict) else None
    if not isinstance(shards, dict) or set(shards) != set(SHARDS):
        raise InvalidRequest("The cursor is invalid.")
    positions: dict[str, list[str] | None] = {}
    for shard, position in shards.items():
        if position is not None and not (
            isinstance(position, list)
            and len(position) in (0, 2)
            and all(isinstance(part, str) and 0 < len(part) <= 256 for part in position)
        ):
            raise InvalidRequest("The cursor is invalid.")
        positions[shard] = position
    return positions


def list_open(limit: int, cursor: str | None) -> dict[str, Any]:
    """A page of the open items, newest first, merged over the shards."""
    positions = _positions(cursor)
    fetched: dict[str, list[UnbilledUsage]] = {}
    for shard, position in positions.items():
        if position is None:
            continue
        start = (
            {
                "open_shard": {"S": shard},
                "created_at": {"S": position[0]},
                "request_id": {"S": position[1]},
            }
            if position
            else None
        )
        fetched[shard] = list(
            UnbilledUsage.open_by_time.query(
                shard, scan_index_forward=False, limit=limit, last_evaluated_key=start
            )
        )
    # Each shard's items stay in the index's own order; the merge takes the newest first.
    merged = heapq.merge(*fetched.values(), key=lambda item: item.created_at, reverse=True)
    page = list(itertools.islice(merged, limit))
    following: dict[str, list[str] | None] = dict(positions)
    for shard, items in fetched.items():
        taken = [item for item in page if item.open_shard == shard]
        if taken:
            following[shard] = [taken[-1].created_at, taken[-1].request_id]
        if len(taken) == len(items) and len(items) < limit:
            following[shard] = None  # all of it is on this page or before
    more = any(position is not None for position in following.values())
    return {
        "items": [render(item) for item in page],
        "next_cursor": encode_cursor({"unbilled": following}) if more else None,
    }


def get(request_id: str) -> UnbilledUsage:
    try:
        return UnbilledUsage.get(request_id, consistent_read=True)
    except DoesNotExist:
        raise NotFound("No unbilled usage has this request_id.") from None


def remeter(admin_id: str, request_id: str, *, settings: Settings | None = None) -> UnbilledUsage:
    """Meter the kept usage now, as a settle; the item, closed with the result that billed
    it. RemeterFailed (409) if it still cannot be billed, TryAgain (503) on a transient
    failure; either way nothing was billed and the item stays open."""
    item = get(request_id)
    if item.status != UNBILLED:
        return item
    event = UsageEvent(
        action=Action.SETTLE,
        request_id=item.request_id,
        user_id=item.user_id,
        model=item.model,
        prompt_tokens=int(item.prompt_tokens),
        completion_tokens=int(item.completion_tokens),
        group=item.group,
        key_id=item.key_id,  # counted in the key's window, and listed under the key
    )
    outcome = metering.meter([event], settings=settings)
    (result,) = outcome.results
    if result is None:
        raise TryAgain() from (outcome.errors[0] if outcome.errors else None)
    record = metering.read_records([request_id]).get(request_id)
    billed = None
    if record is not None and record.user_id == item.user_id:
        billed = metering.billed_result(record)
    at = clock.iso()
    if billed is None:
        error = str(result.get("error") or result["status"])
        # Closed meanwhile by another re-meter (UpdateError): the refusal still holds.
        with contextlib.suppress(UpdateError):
            item.update(
                actions=[
                    UnbilledUsage.attempts.add(1),
                    UnbilledUsage.last_error.set(error),
                    UnbilledUsage.updated_at.set(at),
                ],
                condition=UnbilledUsage.status == UNBILLED,
            )
        raise RemeterFailed(f"The usage still cannot be billed: {error}: {result.get('message')}")
    try:
        item.update(
            actions=[
                UnbilledUsage.status.set(REMETERED),
                UnbilledUsage.open_shard.remove(),
                UnbilledUsage.result.set(billed),
                UnbilledUsage.remetered_by.set(admin_id),
                UnbilledUsage.remetered_at.set(at),
                UnbilledUsage.updated_at.set(at),
            ],
            condition=UnbilledUsage.status == UNBILLED,
        )
    except UpdateError as exc:
        if not _condition_failed(exc):
            # Billed, but not closed: the next re-meter finds it billed and closes it.
            raise TryAgain() from exc
        # Another re-meter closed it first, with the same billing result.
        return get(request_id)
    return item
