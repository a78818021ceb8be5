"""Queue mode: usage events on the SQS usage queue, fire and forget.

The metering function reads the queue in batches (any delivery order holds, duplicates are
recognised by request_id). One message per event, ten per `SendMessageBatch`; entries SQS
did not take are sent again with backoff, and what still is not taken after the last
attempt raises `MeterError` with those events' request_ids: nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from quota_meter.results import MeterError
from quota_meter.retry import RetryPolicy, is_transient_exception

logger = logging.getLogger("quota_meter")
SQS_BATCH = 10  # SendMessageBatch takes at most ten entries


class UsageQueue:
    def __init__(self, sqs: Any, queue_url: str, retry: RetryPolicy) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.retry = retry

    def send(self, events: Sequence[dict[str, Any]]) -> None:
        unsent: list[str] = []
        for start in range(0, len(events), SQS_BATCH):
            unsent += self._send_batch(events[start : start + SQS_BATCH])
        if unsent:
            raise MeterError(
                f"{len(unsent)} usage event(s) could not be queued",
                request_ids=unsent,
                retryable=True,
            )

    def _send_batch(self, events: Sequence[dict[str, Any]]) -> list[str]:
        """Send up to ten events; the request_ids of those still not taken at the end."""
        pending = {str(i): event for i, event in enumerate(events)}
        attempt = 0
        while pending:
            attempt += 1
            entries = [
                {"Id": entry_id, "MessageBody": json.dumps(event)}
                for entry_id, event in pending.items()
            ]
            try:
                response = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except Exception as exc:
                if not is_transient_exception(exc):
                    raise MeterError(
                        f"SendMessageBatch failed: {exc}",
                        request_ids=[e["request_id"] for e in pending.values()],
                        attempts=attempt,
                    ) from exc
                failed = set(pending)
            else:
                for ok in response.get("Successful", []):
                    pending.pop(ok["Id"], None)
                sender_faults = [f for f in response.get("Failed", []) if f.get("SenderFault")]
                if sender_faults:
                    # SQS says the message itself is wrong: another try cannot help.
                    raise MeterError(
                        f"SQS refused usage event(s): {sender_faults[0].get('Message')}",
                        request_ids=[pending[f["Id"]]["request_id"] for f in sender_faults],
                        attempts=attempt,
                        code=sender_faults[0].get("Code"),
                    )
                failed = set(pending)
            if not failed:
                break
            if attempt >= self.retry.max_attempts:
                break
            delay = self.retry.delay(attempt)
            logger.info("%d usage message(s) not queued; retrying in %.3f s", len(failed), delay)
            time.sleep(delay)
        return [event["request_id"] for event in pending.values()]
