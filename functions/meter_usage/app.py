"""Meter usage: Lambda Invoke (one event or {"events": [...]}), the usage SQS queue, and the
scheduled release of expired holds.

Parse and validate each event (pydantic, strict), meter the valid ones in one call of the
domain (so a batch is aggregated per user), and map the results back in input order. An
invalid event is `rejected`/`invalid_event` and nothing is written for it. From the queue,
a refused event is a final result (logged, not retried); only a transient failure fails its
message, which SQS then redelivers (the record makes the retry a duplicate where it applied).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from billing.errors import InvalidEvent
from billing.settings import load_settings
from billing.usage import metering
from billing.usage.metering import Action, Result, UsageEvent
from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = Logger()

Name = Annotated[str, Field(min_length=1, max_length=128)]
# Far above any real request, low enough that every price is computed exactly.
Tokens = Annotated[int, Field(ge=0, le=10**15)]


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

    def to_event(self) -> UsageEvent:
        return UsageEvent(
            action=Action(self.action),
            request_id=self.request_id,
            user_id=self.user_id,
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            group=self.group,
        )


class PayloadError(Exception):
    """The payload as a whole cannot be metered (not a batch, too many events)."""


class TransientMeteringError(Exception):
    """Some events could not be metered now; a retry is safe (duplicates are recognised)."""


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
        raise PayloadError(f"A batch has only 'events'; unknown field '{extra[0]}'.")
    events = payload["events"]
    if not isinstance(events, list):
        raise PayloadError("'events' must be a list of usage events.")
    limit = load_settings().limits.max_batch_events
    if len(events) > limit:
        raise PayloadError(f"A batch holds at most {limit} events; this one has {len(events)}.")
    return events


def meter_raw(raw_events: Sequence[Any]) -> metering.Metered:
    """Validate then meter; results in input order (None where a transient error struck)."""
    parsed = [parse_event(raw) for raw in raw_events]
    valid = [(index, item) for index, item in enumerate(parsed) if isinstance(item, UsageEvent)]
    outcome = metering.meter([event for _, event in valid])
    results: list[Result | None] = [
        None if isinstance(item, UsageEvent) else item for item in parsed
    ]
    for (index, _), result in zip(valid, outcome.results, strict=True):
        results[index] = result
    for result in results:
        if result is not None and result["status"] == metering.Status.REJECTED:
            logger.info(
                "usage event rejected",
                extra={"request_id": result["request_id"], "error": result["error"]},
            )
    return metering.Metered(results, outcome.errors)


def _complete(outcome: metering.Metered) -> list[Result]:
    if not outcome.complete:
        # Nothing partial is lost: events already written are duplicates on the retry.
        raise TransientMeteringError("some usage events could not be metered now; retry") from (
            outcome.errors[0] if outcome.errors else None
        )
    return [result for result in outcome.results if result is not None]


def handle_invoke(payload: Any) -> dict[str, Any]:
    try:
        events = split_payload(payload)
    except PayloadError as exc:
        logger.info("usage payload rejected", extra={"reason": str(exc)})
        return {"error": {"code": InvalidEvent.code, "message": str(exc)}}
    if events is None:
        return _complete(meter_raw([payload]))[0]
    return {"results": _complete(meter_raw(events))}


def handle_queue(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """One metering call for the whole SQS batch, then per-message success or failure."""
    records = [SQSRecord(raw) for raw in event["Records"]]
    raw_events: list[Any] = []
    owner: list[str] = []  # message id of each event
    for record in records:
        try:
            body = json.loads(record.body)
            events = split_payload(body)
        except (ValueError, PayloadError) as exc:
            # Retrying cannot fix the message: log it and let it go.
            logger.warning(
                "usage message rejected",
                extra={"message_id": record.message_id, "reason": str(exc)[:200]},
            )
            continue
        for item in [body] if events is None else events:
            raw_events.append(item)
            owner.append(record.message_id)
    outcome = meter_raw(raw_events)
    failed = {owner[i] for i, result in enumerate(outcome.results) if result is None}
    if failed:
        logger.warning(
            "usage messages left for a retry",
            extra={"messages": len(failed), "error": repr(outcome.errors[:1])},
        )

    def record_handler(record: SQSRecord) -> None:
        if record.message_id in failed:
            raise TransientMeteringError(f"message {record.message_id} will be retried")

    response = process_partial_response(
        event=event,
        record_handler=record_handler,
        processor=BatchProcessor(event_type=EventType.SQS),
        context=context,
    )
    return dict(response)


def _is_queue(event: Any) -> bool:
    records = event.get("Records") if isinstance(event, dict) else None
    return (
        isinstance(records, list)
        and bool(records)
        and all(isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)
    )


def _is_schedule(event: Any) -> bool:
    return (
        isinstance(event, dict)
        and event.get("source") == "aws.events"
        and event.get("detail-type") == "Scheduled Event"
    )


@logger.inject_lambda_context(clear_state=True)
def handler(event: Any, context: LambdaContext) -> Any:
    if _is_queue(event):
        return handle_queue(event, context)
    if _is_schedule(event):
        summary = metering.release_expired()
        logger.info("expired holds released", extra=summary)
        return summary
    return handle_invoke(event)
