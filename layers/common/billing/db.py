"""Shared DynamoDB plumbing for the models' transactions."""

from __future__ import annotations

import os

from pynamodb.connection import Connection

from billing.restore import after_restore

_shared: Connection | None = None


def connection() -> Connection:
    """One botocore client per process: creating one costs far more than a write."""
    global _shared
    if _shared is None:
        region = os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        _shared = Connection(region=region)
    return _shared


@after_restore
def forget_connection() -> None:
    """After a SnapStart restore: the shared client is made again on use."""
    global _shared
    _shared = None
