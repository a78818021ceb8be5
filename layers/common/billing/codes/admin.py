"""Administration of redemption codes: create a batch, list, disable. Each action is audited.

Plaintext codes exist only in the response to the create call: the table holds their keyed
hashes (`code_id`) and the audit trail holds counts and ids, never a code. A batch hands out
exactly the codes that are stored (billing.codes.storage): under throttling it may be
shorter than asked for (the caller asks again for the rest), never longer.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, NamedTuple

from aws_lambda_powertools import Logger
from pynamodb.exceptions import PynamoDBException, UpdateError

from billing import clock, grant_terms, retry
from billing.codes import listing, plaintext, storage
from billing.errors import DomainError, InvalidRequest, NotFound
from billing.facts import ErrorCode
from billing.models import RedemptionCode
from billing.ops import record_audit
from billing.secrets import code_hash_key

logger = Logger(child=True)

MAX_BATCH = 1000
# Seconds a create call may spend writing codes (the function's Timeout is 15 s).
WRITE_BUDGET_SECONDS = 9.0
DISABLE_ATTEMPTS = 6


class TryAgain(DomainError):
    """DynamoDB kept refusing (throttling, conflicting transactions): nothing was done."""

    code = ErrorCode.TRY_AGAIN.value
    status = 503
    message = "The service is busy; try again in a moment."

    def __init__(self, message: str | None = None):
        super().__init__(message, headers={"Retry-After": "1"})


class CreatedBatch(NamedTuple):
    batch_id: str
    codes: list[str]  # formatted plaintext, shown once: exactly the stored ones
    requested: int


def parse_expiry(value: str | None) -> str | None:
    """An ISO-8601 time in the future, as the canonical UTC string the store compares."""
    if value is None:
        return None
    try:
        moment = clock.parse_iso(value)
    except ValueError as exc:
        raise InvalidRequest("expires_at must be an ISO-8601 time.") from exc
    if moment <= clock.now():
        raise InvalidRequest("expires_at must be in the future.")
    return clock.iso(moment)


def create_batch(
    admin_id: str,
    name: str,
    quota: int,
    count: int,
    max_uses: int = 1,
    expires_at: str | None = None,
    grant: Any = None,
    *,
    time_budget: float = WRITE_BUDGET_SECONDS,
) -> CreatedBatch:
    """Generate `count` codes, store their hashes, return the plaintexts of the stored ones
    (the only time they are shown). TryAgain when none could be stored. `grant` makes a promo
    code: its credit's grant terms (billing.grant_terms)."""
    if not 1 <= count <= MAX_BATCH:
        raise InvalidRequest(f"count must be 1 to {MAX_BATCH}.")
    if quota <= 0 or max_uses < 1:
        raise InvalidRequest("quota must be positive and max_uses at least 1.")
    expiry = parse_expiry(expires_at)
    terms = grant_terms.parse(grant)
    deadline = time.monotonic() + max(0.0, time_budget)
    batch_id = f"b-{uuid.uuid4().hex}"
    at = clock.iso()
    key = code_hash_key()
    plaintexts: dict[str, str] = {}
    for _ in range(count):
        code = plaintext.generate()
        plaintexts[plaintext.code_id(code, key)] = code
    items = [
        RedemptionCode(
            code_id=code_id,
            list_shard=listing.shard_of(code_id),
            list_sort=listing.sort_key(at, code_id),
            name=name,
            quota=quota,
            max_uses=max_uses,
            uses=0,
            status="active",
            expires_at=expiry,
            grant=terms,
            batch_id=batch_id,
            created_by=admin_id,
            created_at=at,
        )
        for code_id in plaintexts
    ]
    detail: dict[str, Any] = {
        "name": name,
        "quota": quota,
        "count": count,
        "max_uses": max_uses,
        "expires_at": expiry,
        "grant": terms,
    }
    # On record before any code exists, so no stored code is ever without its audit entry.
    record_audit(admin_id, "redemption_codes.create", batch_id, detail)
    outcome = storage.store(items, deadline=deadline)
    if len(outcome.stored) < count:
        _record_shortfall(admin_id, batch_id, count, outcome)
    if not outcome.stored:
        if outcome.error is not None and not outcome.retryable:
            raise outcome.error
        raise TryAgain("No code could be stored; try again in a moment.") from outcome.error
    shown = [plaintext.format_code(p) for c, p in plaintexts.items() if c in outcome.stored]
    return CreatedBatch(batch_id=batch_id, codes=shown, requested=count)


def _record_shortfall(admin_id: str, batch_id: str, count: int, outcome: storage.Outcome) -> None:
    """Codes that may be stored although they are not handed out are named for an admin (they
    can be disabled); a failure here must not cost the caller the codes that are stored."""
    detail = {
        "requested": count,
        "stored": len(outcome.stored),
        "unconfirmed_code_ids": outcome.unconfirmed,
    }
    try:
        record_audit(admin_id, "redemption_codes.create_incomplete", batch_id, detail)
    except PynamoDBException:
        logger.exception(
            "audit of an incomplete batch failed", extra={"batch_id": batch_id, **detail}
        )


def render_code(code: RedemptionCode) -> dict[str, Any]:
    return {
        "code_id": code.code_id,
        "name": code.name,
        "quota": int(code.quota),
        "uses": int(code.uses),
        "max_uses": int(code.max_uses),
        "status": code.status,
        "expires_at": code.expires_at,
        "batch_id": code.batch_id,
        "created_by": code.created_by,
        "created_at": code.created_at,
        "disabled_at": code.disabled_at,
        "grant": _stored_grant(code),
    }


def _stored_grant(code: RedemptionCode) -> dict[str, Any] | None:
    raw = code.grant
    if raw is None:
        return None
    values = raw.as_dict() if hasattr(raw, "as_dict") else dict(raw)
    return {str(k): int(v) if isinstance(v, int | float) else v for k, v in values.items()}


def list_codes(admin_id: str, limit: int, cursor: str | None) -> dict[str, Any]:
    """A page of codes, newest first."""
    codes, next_cursor = listing.newest_first(limit, cursor)
    record_audit(admin_id, "redemption_codes.list", "", {"limit": limit, "returned": len(codes)})
    return {"items": [render_code(code) for code in codes], "next_cursor": next_cursor}


def _conflict(exc: BaseException) -> bool:
    return retry.error_code(exc) == retry.TRANSACTION_CONFLICT


def disable(admin_id: str, code_id: str) -> dict[str, Any]:
    """Mark a code disabled (idempotent); an unknown code is NotFound.

    A redemption of the same code in flight makes the update fail with TransactionConflict
    (botocore does not retry it): it is retried with backoff, then TryAgain.
    """
    if not plaintext.is_code_id(code_id):
        raise NotFound("No such code.")
    at = clock.iso()
    code = RedemptionCode(code_id=code_id)

    def update() -> None:
        code.update(
            actions=[
                RedemptionCode.status.set("disabled"),
                # A repeated disable keeps the first time.
                RedemptionCode.disabled_at.set(RedemptionCode.disabled_at | at),
            ],
            condition=RedemptionCode.code_id.exists(),
        )

    try:
        retry.retrying(update, retry_on=_conflict, attempts=DISABLE_ATTEMPTS, base=0.02, cap=0.5)
    except UpdateError as exc:
        if exc.cause_response_code == "ConditionalCheckFailedException":
            raise NotFound("No such code.") from exc
        if _conflict(exc):
            raise TryAgain("The code is being redeemed; try again in a moment.") from exc
        raise
    record_audit(admin_id, "redemption_codes.disable", code_id)
    return render_code(code)
