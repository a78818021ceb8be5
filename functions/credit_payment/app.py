"""Credit-payment function: credits verified payment events from the credit FIFO queue, and
(on its schedule) expires pending orders past their lifetime.

The queue's message groups are orders: within a group, Powertools' FIFO batch processor stops
at the first failing record and reports it and every later record of that group as failed
(ReportBatchItemFailures), so an order's events are never applied out of order; the records of
other groups in the batch are processed all the same (`skip_group_on_error`), so one order's
poisoned event never holds back, nor pushes toward the DLQ, another order's credit. SQS
retries the failed records and moves a message that keeps failing to the DLQ (alarm).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import SqsFifoPartialProcessor, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from billing import init_phase
from billing.payments import crediting, orders
from billing.payments.providers.base import PaymentEvent

if TYPE_CHECKING:
    # An annotation only: Powertools' typing module is nothing the handler runs.
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
processor = SqsFifoPartialProcessor(skip_group_on_error=True)


def record_handler(record: SQSRecord) -> None:
    event = PaymentEvent.from_message(record.body)
    # The record's lines carry its order and event (the batch's records share one invocation).
    logger.append_keys(
        order_id=event.order_id, event_id=event.event_id, message_id=record.message_id
    )
    crediting.apply_event(event)


def _is_schedule(event: Any) -> bool:
    return (
        isinstance(event, dict)
        and event.get("source") == "aws.events"
        and event.get("detail-type") == "Scheduled Event"
    )


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if _is_schedule(event):
        return orders.expire_overdue()
    return dict(
        process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    )


# INIT is over: garbage collection resumes (billing.init_phase).
init_phase.finished()
