"""The usage DLQ, for what the metering function cannot read: the message goes there as it
came (or, for the invalid events of a readable message, as a batch of its own), with the
reason as a message attribute. The queue's alarm tells an operator; nothing is deleted unseen.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from billing.restore import after_restore

_client: Any = None
_lock = threading.Lock()


def sqs() -> Any:
    """One SQS client per process (the DLQ's and the usage queue's, billing.usage.requeue):
    creating one costs far more than a send."""
    global _client
    with _lock:
        if _client is None:
            import boto3
            from botocore.config import Config

            # Few, quick retries: a send that fails hands the message back to the queue
            # (which redrives it to the DLQ in the end), well within the function's timeout.
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
    # Its pooled connections belong to the snapshotted instance (billing.restore).
    global _client
    with _lock:
        _client = None


def send(body: str, *, reason: str, source_message_id: str) -> None:
    """Put one message on the usage DLQ; raises if it did not take it."""
    sqs().send_message(
        QueueUrl=os.environ["USAGE_DLQ_URL"],
        MessageBody=body,
        MessageAttributes={
            "reason": {"DataType": "String", "StringValue": reason},
            "source_message_id": {"DataType": "String", "StringValue": source_message_id},
        },
    )
