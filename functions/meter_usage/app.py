"""Meter usage: Lambda Invoke (one event or {"events": [...]}), the usage SQS queue, and the
scheduled release of expired holds.

Thin: it tells the three kinds of event apart and calls the domain (billing.usage.intake
reads, meters within the invocation's time budget and answers; billing.usage.metering
sweeps). From the queue, the messages intake hands back are reported as batch item failures,
so SQS delivers them again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from billing import init_phase
from billing.usage import intake, metering

if TYPE_CHECKING:
    # An annotation only: Powertools' typing module is nothing the handler runs.
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()


class HandedBack(Exception):
    """The message is reported as a batch item failure: SQS delivers it again."""


def _receive_count(record: SQSRecord) -> int:
    value = (record.raw_event.get("attributes") or {}).get("ApproximateReceiveCount")
    return int(value) if isinstance(value, str) and value.isdigit() else 1


def handle_queue(
    event: dict[str, Any], context: LambdaContext, budget: intake.Budget
) -> dict[str, Any]:
    messages = [
        intake.QueueMessage(r.message_id, r.body, _receive_count(r))
        for r in map(SQSRecord, event["Records"])
    ]
    handed_back = set(intake.meter_messages(messages, budget))

    def record_handler(record: SQSRecord) -> None:
        if record.message_id in handed_back:
            raise HandedBack(f"message {record.message_id} comes back later")

    # A batch handed back whole is no function error: its messages simply come back.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return dict(process_partial_response(event, record_handler, processor, context))


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
    budget = intake.Budget.from_remaining(context.get_remaining_time_in_millis())
    if _is_queue(event):
        return handle_queue(event, context, budget)
    if _is_schedule(event):
        summary = metering.release_expired(deadline=budget.deadline)
        logger.info("expired holds released", extra=summary)
        return summary
    return intake.meter_payload(event, budget)


# INIT is over: garbage collection resumes (billing.init_phase).
init_phase.finished()
