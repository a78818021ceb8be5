"""One backoff for every retry loop of the domain: capped exponential backoff with full jitter.

The delay before retry `attempt` (0 for the first retry) is drawn uniformly from
[0, min(cap, base * 2**attempt)] ("full jitter" in AWS's Architecture Blog, "Exponential
Backoff And Jitter"): contenders that failed together spread out instead of colliding again.

Also the error codes a retry may cure that botocore does not retry by itself: a single-item
write that meets a transaction in flight on the same item fails with
TransactionConflictException, which botocore's retry modes leave to the caller.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

TRANSACTION_CONFLICT = "TransactionConflictException"
# Throttling that outlasted botocore's own retries, and the server errors DynamoDB retries on.
THROTTLING = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
    }
)


def delay(attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait before retry number `attempt` (0-based)."""
    ceiling = min(cap, base * 2 ** min(max(attempt, 0), 32))
    return random.uniform(0, ceiling)  # noqa: S311 - jitter, not a secret


def pause(attempt: int, *, base: float, cap: float) -> None:
    time.sleep(delay(attempt, base=base, cap=cap))


def error_code(exc: BaseException) -> str | None:
    """The AWS error code behind a PynamoDB or botocore exception, if there is one."""
    code = getattr(exc, "cause_response_code", None)
    if code is None:
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
    return code if isinstance(code, str) else None


def retrying(
    call: Callable[[], T],
    *,
    retry_on: Callable[[BaseException], bool],
    attempts: int,
    base: float,
    cap: float,
) -> T:
    """`call()`, retried with backoff while it raises what `retry_on` accepts, at most
    `attempts` calls in all; the last error is raised as it is."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if attempt + 1 >= attempts or not retry_on(exc):
                raise
            pause(attempt, base=base, cap=cap)
    raise ValueError("attempts must be at least 1")


# A single-item write that met a transaction: tried this often in all before it fails.
CONFLICT_ATTEMPTS = 5


def is_conflict(exc: BaseException) -> bool:
    return error_code(exc) == TRANSACTION_CONFLICT


def through_conflicts(write: Callable[[], T]) -> T:
    """A single-item write (update, put, delete) retried while it meets a transaction on the
    same item (TransactionConflict: nothing was written, so another try is safe); other
    errors, a failed condition among them, are raised at once."""
    return retrying(write, retry_on=is_conflict, attempts=CONFLICT_ATTEMPTS, base=0.02, cap=0.5)
