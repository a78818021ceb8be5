"""Putting billing events on the EventBridge bus (source `quota.billing`).

PutEvents is at least once, and it may accept some entries of a call and refuse others:
anything refused raises, so the caller keeps its outbox and the stream retries. An event's
`id` is ours (deterministic), carried in the detail; EventBridge's own id differs per put.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from billing.restore import after_restore, preload_before_snapshot

SOURCE = "quota.billing"
_MAX_PER_CALL = 10  # PutEvents takes at most 10 entries

_client: Any = None


class PublishFailed(Exception):
    pass


def _events() -> Any:
    global _client
    if _client is None:
        import boto3  # on the first publish, not at every cold start (~20 ms)

        _client = boto3.client("events")
    return _client


preload_before_snapshot("boto3")


@after_restore
def forget_client() -> None:
    # Its pooled connections belong to the snapshotted instance (billing.restore).
    global _client
    _client = None


def publish(events: Sequence[dict[str, Any]]) -> None:
    bus = os.environ.get("BILLING_EVENT_BUS", "")
    if not bus:
        raise PublishFailed("BILLING_EVENT_BUS is not set")
    for start in range(0, len(events), _MAX_PER_CALL):
        chunk = events[start : start + _MAX_PER_CALL]
        answer = _events().put_events(
            Entries=[
                {
                    "EventBusName": bus,
                    "Source": SOURCE,
                    "DetailType": str(event["type"]),
                    "Detail": json.dumps(event, sort_keys=True),
                }
                for event in chunk
            ]
        )
        if answer.get("FailedEntryCount"):
            codes = sorted(
                {str(e.get("ErrorCode")) for e in answer.get("Entries", []) if e.get("ErrorCode")}
            )
            raise PublishFailed(f"EventBridge refused {answer['FailedEntryCount']} events: {codes}")
