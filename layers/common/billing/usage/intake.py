"""Usage intake: what reaches the metering function, read, metered in one call within a time
budget, and answered.

- Invoke: one event, or `{"events": [...]}` (up to `limits.max_batch_events`): one result, or
  `{"results": [...]}` in input order. A payload that is no valid batch is answered with
  `{"error": invalid_event}` and nothing is written. An invalid event is `rejected` with
  `invalid_event` and nothing is written for it.
- Usage queue: each message body is such a payload. The events of the messages are metered
  in ONE call (so they are aggregated per user), up to MAX_QUEUE_EVENTS: the messages beyond
  it are put back on the queue as they are (billing.usage.requeue). A message is handed back
  (a batch item failure: SQS delivers it again) when any of its events was left unmetered, by a
  transient error or because the time budget ran out; its events already metered are then
  duplicates. Nothing is dropped: a message that cannot be read (not JSON, not an object, no
  valid batch, over the limit) goes to the usage DLQ as it is, and the events of a readable
  message refused as `invalid_event` go there as a batch of their own (billing.usage
  .dead_letters); a message whose dead letters the DLQ did not take is handed back.
- Usage that happened but cannot be billed (a settle or charge refused with `unknown_model`
  or `account_not_found`) is kept for an admin (billing.usage.unbilled), whichever way it came.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

from aws_lambda_powertools import Logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from billing import metrics
from billing.errors import InvalidEvent
from billing.metrics import Metric
from billing.settings import load_settings
from billing.usage import dead_letters, metering, requeue, unbilled
from billing.usage.metering import Action, Result, Status, UsageEvent

logger = Logger(child=True)

Name = Annotated[str, Field(min_length=1, max_length=128)]
# Far above any real request, low enough that every price is computed exactly.
Tokens = Annotated[int, Field(ge=0, le=10**15)]

# The time kept back from the function's remaining time: enough for the step under way when
# the budget runs out (one transaction and its reads) and for the answers after it (dead
# letters, unbilled usage). A fifth of the time, at least 1 s, at most 10 s.
MARGIN_SHARE = 0.2
MIN_MARGIN_MS = 1_000
MAX_MARGIN_MS = 10_000
# Events metered per usage-queue invocation: five full messages of 500 took 223 s of the 290 s
# budget on the loaded local stack (bench/metering.py); in AWS they take a few seconds.
MAX_QUEUE_EVENTS = 2_500


class EventBody(BaseModel):
    """One usage event as API.md defines it: strict types, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    action: Literal["charge", "reserve", "settle", "release"]
    request_id: Name
    user_id: Name
    model: Name
    prompt_tokens: Tokens
    completion_tokens: Tokens
    group: Name | None = None
    key_id: Name | None = None  # the API key the gateway served (spend limits per key)

    def to_event(self) -> UsageEvent:
        return UsageEvent(
            action=Action(self.action),
            request_id=self.request_id,
            user_id=self.user_id,
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            group=self.group,
            key_id=self.key_id,
        )


class PayloadError(Exception):
    """The payload as a whole cannot be metered (not a batch, too many events)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TransientMeteringError(Exception):
    """Some events could not be metered now; a retry is safe (duplicates are recognised).
    Its name is the Invoke API's errorType, which callers (quota_meter) retry on: keep it."""


class Budget(NamedTuple):
    """Until when metering may start work (time.monotonic()); None: no limit."""

    deadline: float | None = None

    @classmethod
    def from_remaining(cls, remaining_ms: int) -> Budget:
        """The budget of an invocation with `remaining_ms` left, less the safety margin."""
        return cls(time.monotonic() + (remaining_ms - margin_ms(remaining_ms)) / 1000)


UNLIMITED = Budget()


def margin_ms(remaining_ms: int) -> int:
    """The safety margin kept back from `remaining_ms`."""
    return min(MAX_MARGIN_MS, max(MIN_MARGIN_MS, int(remaining_ms * MARGIN_SHARE)))


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(part) for part in err["loc"]) or "event"
        parts.append(
            f"unknown field '{where}'"
            if err["type"] == "extra_forbidden"
            else f"{where}: {err['msg']}"
        )
    return "Invalid event: " + "; ".join(parts) + "."


def parse_event(raw: Any) -> UsageEvent | Result:
    """A valid event, or its `rejected`/`invalid_event` result."""
    request_id = raw.get("request_id") if isinstance(raw, dict) else None
    request_id = request_id if isinstance(request_id, str) else None
    if not isinstance(raw, dict):
        return metering.rejected(request_id, InvalidEvent("An event is a JSON object."))
    try:
        return EventBody.model_validate(raw).to_event()
    except ValidationError as exc:
        return metering.rejected(request_id, InvalidEvent(_describe(exc)))


def split_payload(payload: Any) -> list[Any] | None:
    """The events of a batch payload, or None for a single event; PayloadError if invalid."""
    if not isinstance(payload, dict) or "events" not in payload:
        return None
    extra = sorted(set(payload) - {"events"})
    if extra:
        raise PayloadError(
            "invalid_batch", f"A batch has only 'events'; unknown field '{extra[0]}'."
        )
    events = payload["events"]
    if not isinstance(events, list):
        raise PayloadError("invalid_batch", "'events' must be a list of usage events.")
    limit = load_settings().limits.max_batch_events
    if len(events) > limit:
        raise PayloadError(
            "over_limit", f"A batch holds at most {limit} events; this one has {len(events)}."
        )
    return events


def meter_raw(
    raw_events: Sequence[Any],
    budget: Budget = UNLIMITED,
    redelivered: Sequence[bool] | None = None,
) -> metering.Metered:
    """Validate, meter, keep what cannot be billed; results in input order (None where an
    event was left unmetered). `redelivered`: per event, whether it may have been metered
    before (metering reads its record first)."""
    parsed = [parse_event(raw) for raw in raw_events]
    valid = [(index, item) for index, item in enumerate(parsed) if isinstance(item, UsageEvent)]
    events = [event for _, event in valid]
    again = [bool(redelivered and redelivered[index]) for index, _ in valid]
    outcome = metering.meter(events, deadline=budget.deadline, redelivered=again)
    kept = unbilled.keep(events, outcome.results, deadline=budget.deadline)
    results: list[Result | None] = [
        None if isinstance(item, UsageEvent) else item for item in parsed
    ]
    for (index, _), result in zip(valid, kept.results, strict=True):
        results[index] = result
    for result in results:
        if result is not None and result["status"] == metering.Status.REJECTED:
            logger.info(
                "usage event rejected",
                extra={
                    "request_id": result["request_id"],
                    "error": result["error"],
                    "unbilled": bool(result.get("unbilled")),
                },
            )
    _count(results)
    return metering.Metered(results, [*outcome.errors, *kept.errors], outcome.timed_out)


def _count(results: Sequence[Result | None]) -> None:
    """The usage metrics of one call: events billed now (charged, or a hold settled) with
    their quota, and events rejected by error (duplicates count as neither)."""
    billed = [r for r in results if r and r["status"] in (Status.CHARGED, Status.SETTLED)]
    metrics.count(Metric.USAGE_EVENTS_CHARGED, len(billed))
    metrics.count(Metric.USAGE_QUOTA_CHARGED, sum(int(r.get("quota") or 0) for r in billed))
    rejected = Counter(str(r.get("error")) for r in results if r and r["status"] == Status.REJECTED)
    for error, n in sorted(rejected.items()):
        metrics.count(Metric.USAGE_EVENTS_REJECTED, n, error=error)


def _complete(outcome: metering.Metered) -> list[Result]:
    if any(result is None for result in outcome.results):
        reason = "the time budget ran out" if outcome.timed_out else "a transient error"
        # Nothing partial is lost: events already written are duplicates on the retry.
        raise TransientMeteringError(f"some usage events were not metered ({reason}); retry") from (
            outcome.errors[0] if outcome.errors else None
        )
    return [result for result in outcome.results if result is not None]


# ---------------------------------------------------------------- the Invoke API


def meter_payload(payload: Any, budget: Budget = UNLIMITED) -> dict[str, Any]:
    """One event's result, or a batch's `{"results": [...]}`; TransientMeteringError if some
    events could not be metered in time (the caller retries with the same request ids)."""
    try:
        events = split_payload(payload)
    except PayloadError as exc:
        logger.info("usage payload rejected", extra={"reason": str(exc)})
        return {"error": {"code": InvalidEvent.code, "message": str(exc)}}
    if events is None:
        return _complete(meter_raw([payload], budget))[0]
    return {"results": _complete(meter_raw(events, budget))}


# ---------------------------------------------------------------- the usage queue


class QueueMessage(NamedTuple):
    message_id: str
    body: str
    receive_count: int = 1  # SQS's ApproximateReceiveCount: above 1, a redelivery


@dataclass
class _Read:
    message: QueueMessage
    events: list[Any]
    first: int = 0  # index of its first event in the call


def _read_message(message: QueueMessage) -> list[Any]:
    """The events of one message; PayloadError if it cannot be read."""
    try:
        payload = json.loads(message.body)
    except ValueError:
        raise PayloadError("not_json", "The message body is not JSON.") from None
    if not isinstance(payload, dict):
        raise PayloadError("not_an_object", "The message body is not a JSON object.")
    events = split_payload(payload)
    return [payload] if events is None else events


def max_queue_events() -> int:
    """The events one invocation meters from the usage queue (env MAX_QUEUE_EVENTS)."""
    value = os.environ.get("MAX_QUEUE_EVENTS", "")
    return int(value) if value.isdigit() and int(value) > 0 else MAX_QUEUE_EVENTS


def meter_messages(messages: Sequence[QueueMessage], budget: Budget = UNLIMITED) -> list[str]:
    """Meter a batch of usage-queue messages; the ids of the messages to hand back.

    The queue batches many messages so that single-event producers' usage is aggregated per
    user; messages beyond max_queue_events() events (counted in batch order, the first one
    always taken) are put back on the queue unmetered (billing.usage.requeue)."""
    handed_back: list[str] = []
    readable: list[_Read] = []
    deferred: list[tuple[str, str]] = []
    raw_events: list[Any] = []
    redelivered: list[bool] = []
    cap = max_queue_events()
    for message in messages:
        try:
            events = _read_message(message)
        except PayloadError as exc:
            if not _dead_letter(message, message.body, exc.reason, str(exc)):
                handed_back.append(message.message_id)
            continue
        if raw_events and len(raw_events) + len(events) > cap:
            deferred.append((message.message_id, message.body))
            continue
        readable.append(_Read(message, events, len(raw_events)))
        raw_events.extend(events)
        # Handed back before, part of it was metered: those events are duplicates now.
        redelivered.extend([message.receive_count > 1] * len(events))
    outcome = meter_raw(raw_events, budget, redelivered)
    left = 0
    for read in readable:
        results = outcome.results[read.first : read.first + len(read.events)]
        if any(result is None for result in results):
            left += 1
            handed_back.append(read.message.message_id)
            continue
        invalid = [
            raw
            for raw, result in zip(read.events, results, strict=True)
            if result is not None and result.get("error") == InvalidEvent.code
        ]
        if invalid and not _dead_letter(
            read.message,
            json.dumps({"events": invalid}, separators=(",", ":")),
            InvalidEvent.code,
            f"{len(invalid)} of the message's {len(read.events)} events are invalid.",
        ):
            handed_back.append(read.message.message_id)
    if deferred:
        not_taken = requeue.send(deferred)
        handed_back.extend(message_id for message_id, _ in deferred if message_id in not_taken)
        logger.info(
            "usage messages put back on the queue",
            extra={"messages": len(deferred), "not_taken": len(not_taken), "cap": cap},
        )
    if left:
        logger.warning(
            "usage messages handed back for a retry",
            extra={
                "messages": left,
                "timed_out": outcome.timed_out,
                "error": repr(outcome.errors[:1]),
            },
        )
    return handed_back


def _dead_letter(message: QueueMessage, body: str, reason: str, detail: str) -> bool:
    """Send to the usage DLQ; False when it did not take it (then the message comes back)."""
    try:
        dead_letters.send(body, reason=reason, source_message_id=message.message_id)
    except Exception as exc:  # any failure: hand the message back, never drop it
        logger.error(
            "usage DLQ did not take a message; handing it back",
            extra={"message_id": message.message_id, "reason": reason, "error": repr(exc)},
        )
        return False
    logger.warning(
        "usage message sent to the DLQ",
        extra={"message_id": message.message_id, "reason": reason, "detail": detail[:200]},
    )
    return True
