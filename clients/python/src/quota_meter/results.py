"""What the metering function answers, as types: `Result`, and the two errors.

`Rejected` is the function's "no" (a refused reserve or charge: `insufficient_quota`,
`limit_exceeded`, ...). `MeterError` is everything that is not an answer: the transport
failed, the function failed, or the retries ran out; its `request_ids` are the ones to send
again later (the same ids, so a late retry can never apply twice).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

STATUSES = frozenset(
    {"charged", "reserved", "settled", "released", "duplicate", "rejected", "queued"}
)
_KNOWN_FIELDS = frozenset(
    {"request_id", "status", "quota", "balance", "error", "message", "first_status"}
)


@dataclass(frozen=True)
class Result:
    """One event's result (API.md "Usage metering"), plus what the client knows of it.

    `status` is the function's, except that a `duplicate` answered to a retry of this very
    call is reported with the status of the first (lost) answer: the duplicate is that
    earlier attempt's effect, so the caller sees what its one call did. `first_status` is
    set whenever the function answered from a stored result. `queued` is the client's own
    status for a charge handed to the usage queue (no quota or balance known yet).
    """

    request_id: str
    status: str
    quota: int | None = None
    balance: int | None = None
    error: str | None = None
    message: str | None = None
    first_status: str | None = None
    attempts: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rejected(self) -> bool:
        return self.status == "rejected"

    @property
    def ok(self) -> bool:
        return not self.rejected

    def raise_for_rejection(self) -> Result:
        """This result, or `Rejected` if the function refused the event."""
        if self.rejected:
            raise Rejected(self)
        return self

    @classmethod
    def from_payload(cls, raw: Any, *, request_id: str, attempts: int = 1) -> Result:
        if not isinstance(raw, Mapping) or raw.get("status") not in STATUSES:
            raise MeterError(
                f"The metering function answered something that is not a result: {raw!r:.200}",
                request_ids=[request_id],
            )
        status = str(raw["status"])
        first = raw.get("first_status")
        if status == "duplicate" and attempts > 1 and isinstance(first, str):
            status = first
        return cls(
            request_id=str(raw.get("request_id") or request_id),
            status=status,
            quota=_int_or_none(raw.get("quota")),
            balance=_int_or_none(raw.get("balance")),
            error=raw.get("error"),
            message=raw.get("message"),
            first_status=first if isinstance(first, str) else None,
            attempts=attempts,
            extra={k: v for k, v in raw.items() if k not in _KNOWN_FIELDS},
        )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class QuotaMeterError(Exception):
    """Base of the client's errors (bad arguments are plain `ValueError`)."""


class Rejected(QuotaMeterError):
    """The function refused the event; `.error` is its code (`insufficient_quota`, ...)."""

    def __init__(self, result: Result) -> None:
        super().__init__(f"{result.error}: {result.message or 'the event was rejected'}")
        self.result = result
        self.error = result.error
        self.request_id = result.request_id


class MeterError(QuotaMeterError):
    """No answer from the metering function: transport or function failure.

    `retryable` says whether sending the same events again later may succeed (it is always
    safe: the request ids are kept); `request_ids` are those events' ids; `results` holds
    what was answered before the failure (the earlier chunks of a batch).
    """

    def __init__(
        self,
        message: str,
        *,
        request_ids: Sequence[str] = (),
        retryable: bool = False,
        attempts: int = 1,
        code: str | None = None,
        results: Sequence[Result] = (),
    ) -> None:
        super().__init__(message)
        self.results = list(results)
        self.request_ids = list(request_ids)
        self.retryable = retryable
        self.attempts = attempts
        self.code = code
