"""Credit-payment function: credits verified payment events from the credit FIFO queue.

Powertools' FIFO batch processor stops at the first failing record and reports it and every
record after it as failed (ReportBatchItemFailures), so the events of an order are never
applied out of order; SQS retries them, and moves a message that keeps failing to the DLQ.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import SqsFifoPartialProcessor, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from billing.payments import crediting
from billing.payments.providers.base import PaymentEvent

logger = Logger()
processor = SqsFifoPartialProcessor()


def record_handler(record: SQSRecord) -> None:
    crediting.apply_event(PaymentEvent.from_message(record.body))


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return dict(
        process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    )
