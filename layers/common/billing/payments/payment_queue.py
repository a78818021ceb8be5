"""The credit queue (SQS FIFO): verified payment events on their way to crediting.

MessageGroupId = the order id, so the events of one order are credited in the order they were
received; MessageDeduplicationId = a hash of provider + event id, so a webhook delivered many
times within SQS's five-minute window is queued once (crediting is idempotent beyond that).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from typing import Any

from billing.payments.providers.base import PaymentEvent
from billing.restore import after_restore

_GROUP_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # SQS: 1..128 printable ASCII characters

_client: Any = None
_lock = threading.Lock()


def _sqs() -> Any:
    """One SQS client per process: creating one costs far more than a send."""
    global _client
    with _lock:
        if _client is None:
            import boto3
            from botocore.config import Config

            # Few, quick retries: if SQS cannot take the event we must answer 5xx (so the
            # provider delivers it again) well within the function's timeout.
            _client = boto3.client(
                "sqs",
                config=Config(
                    connect_timeout=2,
                    read_timeout=5,
                    retries={"mode": "standard", "max_attempts": 3},
                ),
            )
    return _client


@after_restore
def forget_client() -> None:
    """After a SnapStart restore: the SQS client is made again on the next send."""
    global _client
    with _lock:
        _client = None


def deduplication_id(event: PaymentEvent) -> str:
    return hashlib.sha256(f"{event.provider}\x00{event.event_id}".encode()).hexdigest()


def group_id(event: PaymentEvent) -> str:
    key = event.order_id or event.provider_payment_id or f"{event.provider}:{event.event_id}"
    if _GROUP_ID.match(key):
        return key
    return hashlib.sha256(key.encode()).hexdigest()


def send(event: PaymentEvent) -> None:
    """Queue one event durably; raises (botocore) if SQS did not take it."""
    _sqs().send_message(
        QueueUrl=os.environ["CREDIT_QUEUE_URL"],
        MessageBody=event.to_message(),
        MessageGroupId=group_id(event),
        MessageDeduplicationId=deduplication_id(event),
    )
