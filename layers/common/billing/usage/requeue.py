"""Messages of a usage-queue batch beyond what one invocation meters, put back on the queue
as new messages (billing.usage.intake caps the events of one call).

Handing them back as batch item failures instead would keep them invisible for the queue's
whole visibility timeout and count a receive each time, towards the redrive to the DLQ,
though nothing went wrong with them. A copy that is sent while the original also comes back
(the invocation failed after the send) is harmless: metering knows each request_id once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from billing.usage.dead_letters import sqs

# SendMessageBatch takes at most 10 messages.
_BATCH = 10


def send(bodies: Sequence[tuple[str, str]]) -> set[str]:
    """Put (message_id, body) pairs back on the usage queue; the ids it did not take."""
    failed: set[str] = set()
    for start in range(0, len(bodies), _BATCH):
        chunk = bodies[start : start + _BATCH]
        entries = [{"Id": str(n), "MessageBody": body} for n, (_, body) in enumerate(chunk)]
        try:
            answer = sqs().send_message_batch(
                QueueUrl=os.environ["USAGE_QUEUE_URL"], Entries=entries
            )
        except Exception:  # any failure: those messages are handed back, never dropped
            failed.update(message_id for message_id, _ in chunk)
            continue
        failed.update(chunk[int(entry["Id"])][0] for entry in answer.get("Failed", []))
    return failed
