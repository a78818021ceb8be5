"""Bounded retries with exponential backoff and full jitter, and what counts as transient.

Retrying is always safe here: an event keeps its request_id on every attempt and the
function applies each (request_id, action) at most once. So anything that may have been
lost in transit (a timeout, a dropped connection, a throttled or failed invocation that can
succeed later) is retried; what cannot succeed on a retry (bad credentials, a missing
function, a bug) fails at once.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    HTTPClientError,
)

# Lambda Invoke errors that mean "not now" (throttling, a service or capacity hiccup).
TRANSIENT_CODES = frozenset(
    {
        "TooManyRequestsException",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestLimitExceeded",
        "ServiceException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalServerError",
        "InternalFailure",
        "EC2ThrottledException",
        "ENILimitReachedException",
        "SubnetIPAddressLimitReachedException",
        "ResourceNotReadyException",
        "ResourceConflictException",
        "SQSThrottled",
        "RequestThrottled",
        "KMSThrottlingException",
    }
)
# Function errors (X-Amz-Function-Error) after which another invocation may succeed: the
# handler's own "retry me" and the runtime failures of an instance (timeout, crash).
TRANSIENT_FUNCTION_ERRORS = frozenset(
    {"TransientMeteringError", "Sandbox.Timedout", "Runtime.ExitError", "Runtime.Unknown"}
)


@dataclass(frozen=True)
class RetryPolicy:
    """At most `max_attempts` tries; before try n+1 a random pause in
    [0, min(max_delay, base_delay * 2**(n-1))] (full jitter spreads a thundering herd)."""

    max_attempts: int = 5
    base_delay: float = 0.05
    max_delay: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays cannot be negative")

    def delay(self, attempt: int) -> float:
        """The pause after failed attempt number `attempt` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return random.uniform(0, ceiling)  # noqa: S311 (jitter, not a secret)


def is_transient_exception(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if error.get("Code") in TRANSIENT_CODES:
            return True
        return isinstance(status, int) and (status == 429 or status >= 500)
    # Timeouts (read and connect), resets, refused connections: all HTTPClientError.
    return isinstance(exc, HTTPClientError | EndpointConnectionError | ConnectionClosedError)


def is_transient_function_error(payload: Any) -> bool:
    if not isinstance(payload, Mapping):
        return False
    kind = payload.get("errorType")
    message = payload.get("errorMessage")
    if kind in TRANSIENT_FUNCTION_ERRORS:
        return True
    return isinstance(message, str) and "Task timed out" in message
