"""Usage rollups: the usage table's stream folded into totals per (user, day, model, key).

A usage record counts once, when it becomes billed: its new image is `charged` or `settled`
and its old image (if any) was not (a charge is born billed; a hold becomes billed when it is
settled; a release or an expiry never is). Stream records are delivered at least once, so
each contribution is written with a marker per request_id under `attribute_not_exists`, in
the same transaction as the ADD on its rollup item: a replayed record meets its marker and
adds nothing. Nothing is added to the charge's own transaction.

`fold` is pure (stream records in, contributions grouped by rollup item out); `write` does
the transactions and returns the stream sequence numbers it could not write, for the
handler to report as batch item failures (the stream then retries them, and the markers
make the retry exact).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple
from urllib.parse import quote

# Powertools' copy of boto3's TypeDeserializer, which its DynamoDB stream event uses: the
# same values (no binary attributes here) without importing boto3 (~20 ms of a cold start).
from aws_lambda_powertools.shared.dynamodb_deserializer import TypeDeserializer
from pynamodb.exceptions import PynamoDBException, TransactWriteError
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from billing import clock, db
from billing.facts import BILLED_USAGE_STATUSES
from billing.models import RollupMarker, UsageRollup
from billing.retry import pause

# A transaction holds at most 100 items: one rollup update and its markers.
MARKERS_PER_TRANSACTION = 99
# Markers outlive the stream's 24 h retention (and its retries) by far.
MARKER_TTL_SECONDS = 7 * 24 * 3600
MAX_ATTEMPTS = 8

_deserializer = TypeDeserializer()


class Contribution(NamedTuple):
    """What one billed usage record adds to its rollup."""

    sequence: str  # the stream record's SequenceNumber (its batch item identifier)
    request_id: str
    user_id: str
    day: str  # YYYY-MM-DD of the moment it was billed, UTC
    model: str
    key_id: str | None
    quota: int
    prompt_tokens: int
    completion_tokens: int


class RollupKey(NamedTuple):
    user_id: str
    day: str
    model: str
    key_id: str | None

    @property
    def bucket(self) -> str:
        return bucket_name(self.day, self.model, self.key_id)


@dataclass
class Group:
    """Contributions to one rollup item, in stream order."""

    key: RollupKey
    contributions: list[Contribution] = field(default_factory=list)


def bucket_name(day: str, model: str, key_id: str | None) -> str:
    # Escaped so that no model or key name can contain the separator.
    key = "-" if key_id is None else "k:" + quote(key_id, safe="")
    return f"{day}#{quote(model, safe='')}#{key}"


def marker_partition(user_id: str, request_id: str) -> str:
    """A marker's partition: its own request's, never the user's alone. A user's markers
    come at the user's event rate (2 write units each, transactional), far past what one
    partition takes; spread by request_id they are as cold as the usage records."""
    return f"m#{user_id}#{request_id}"


# ---------------------------------------------------------------- the pure fold


def _image(raw: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not raw:
        return None
    return {name: _deserializer.deserialize(value) for name, value in raw.items()}


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | Decimal) else 0


def contribution(record: Mapping[str, Any]) -> Contribution | None:
    """The contribution of one stream record, or None when it bills nothing new."""
    change = record.get("dynamodb") or {}
    new = _image(change.get("NewImage"))
    old = _image(change.get("OldImage"))
    if record.get("eventName") == "REMOVE" or new is None:
        return None
    if new.get("status") not in BILLED_USAGE_STATUSES:
        return None
    if old is not None and old.get("status") in BILLED_USAGE_STATUSES:
        return None  # billed before: counted when it became so
    billed_at = str(new.get("updated_at") or new.get("created_at") or "")
    key_id = new.get("key_id")
    return Contribution(
        sequence=str(change.get("SequenceNumber", "")),
        request_id=str(new["request_id"]),
        user_id=str(new["user_id"]),
        day=billed_at[:10],
        model=str(new.get("model", "")),
        key_id=str(key_id) if key_id else None,
        quota=_int(new.get("quota")),
        prompt_tokens=_int(new.get("prompt_tokens")),
        completion_tokens=_int(new.get("completion_tokens")),
    )


def fold(records: Iterable[Mapping[str, Any]]) -> list[Group]:
    """Billed contributions grouped by rollup item (first appearance order).

    A request_id seen twice in the records (a replay inside one batch) counts once."""
    groups: dict[RollupKey, Group] = {}
    seen: set[tuple[str, str]] = set()
    for record in records:
        item = contribution(record)
        if item is None or (item.user_id, item.request_id) in seen:
            continue
        seen.add((item.user_id, item.request_id))
        key = RollupKey(item.user_id, item.day, item.model, item.key_id)
        groups.setdefault(key, Group(key)).contributions.append(item)
    return list(groups.values())


# ---------------------------------------------------------------- the write


def write(groups: Sequence[Group]) -> list[str]:
    """Write every group; the sequence numbers of the contributions left unwritten."""
    failed: list[str] = []
    for group in groups:
        items = group.contributions
        for start in range(0, len(items), MARKERS_PER_TRANSACTION):
            chunk = items[start : start + MARKERS_PER_TRANSACTION]
            try:
                _write_chunk(group.key, chunk)
            except (PynamoDBException, _Retryable):
                failed.extend(item.sequence for item in chunk)
    return failed


def apply_stream_records(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Fold and write one stream batch; the sequence numbers to report as failures."""
    return write(fold(records))


class _Retryable(Exception):
    pass


def _write_chunk(key: RollupKey, chunk: Sequence[Contribution]) -> None:
    pending = list(chunk)
    for attempt in range(MAX_ATTEMPTS):
        if not pending:
            return
        try:
            _transact(key, pending)
            return
        except TransactWriteError as exc:
            if getattr(exc, "cause_response_code", None) != "TransactionCanceledException":
                raise  # ambiguous (it may have committed): the stream's retry sorts it out
            counted, retry = _sort_cancellation(exc, pending)
            if not retry:
                # Only markers already there: those records were counted by an earlier
                # delivery; write the others without them.
                pending = [item for item in pending if item.request_id not in counted]
                continue
        pause(attempt, base=0.01, cap=0.5)
    if pending:
        raise _Retryable("the rollup kept being contended")


def _sort_cancellation(
    exc: TransactWriteError, pending: Sequence[Contribution]
) -> tuple[set[str], bool]:
    """(request_ids whose marker exists, whether anything else failed: contention etc.)."""
    # PynamoDB sends the puts (markers, in order) before the update (the rollup).
    reasons = list(exc.cancellation_reasons)
    counted: set[str] = set()
    retry = False
    for index, reason in enumerate(reasons):
        code = None if reason is None else reason.code
        if code in (None, "None"):
            continue
        if code == "ConditionalCheckFailed" and index < len(pending):
            counted.add(pending[index].request_id)
        else:
            retry = True
    return counted, retry


def _transact(key: RollupKey, items: Sequence[Contribution]) -> None:
    now = clock.real_now()
    expires = int(now.timestamp()) + MARKER_TTL_SECONDS
    rollup = UsageRollup(user_id=key.user_id, bucket=key.bucket)
    actions: list[Action] = [
        UsageRollup.quota.add(sum(item.quota for item in items)),
        UsageRollup.requests.add(len(items)),
        UsageRollup.prompt_tokens.add(sum(item.prompt_tokens for item in items)),
        UsageRollup.completion_tokens.add(sum(item.completion_tokens for item in items)),
        UsageRollup.day.set(key.day),
        UsageRollup.model.set(key.model),
        UsageRollup.updated_at.set(clock.iso(now)),
    ]
    if key.key_id is not None:
        actions.append(UsageRollup.key_id.set(key.key_id))
    with TransactWrite(connection=db.connection()) as transaction:
        for item in items:
            marker = RollupMarker(
                user_id=marker_partition(key.user_id, item.request_id),
                bucket=f"r#{item.request_id}",
                rollup=key.bucket,
                expires_at=expires,
            )
            transaction.save(marker, condition=RollupMarker.bucket.does_not_exist())
        transaction.update(rollup, actions=actions)
