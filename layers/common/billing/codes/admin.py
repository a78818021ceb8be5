"""Administration of redemption codes: create a batch, list, disable. Each action is audited.

Plaintext codes exist only in the response to the create call: the table holds their keyed
hashes (`code_id`) and the audit trail holds counts and ids, never a code.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from pynamodb.exceptions import UpdateError

from billing import clock, grant_terms
from billing.codes import plaintext
from billing.errors import InvalidRequest, NotFound
from billing.models import RedemptionCode
from billing.ops import record_audit
from billing.pagination import newest_first
from billing.secrets import code_hash_key

MAX_BATCH = 1000
LIST_KEY = "codes"  # the single partition of the by_created index (admin listing only)


@dataclass(frozen=True)
class CreatedBatch:
    batch_id: str
    codes: list[str]  # formatted plaintext, shown once


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
) -> CreatedBatch:
    """Generate `count` codes, store their hashes, return the plaintexts (the only time).
    `grant` makes a promo code: its credit's grant terms (billing.grant_terms)."""
    if not 1 <= count <= MAX_BATCH:
        raise InvalidRequest(f"count must be 1 to {MAX_BATCH}.")
    if quota <= 0 or max_uses < 1:
        raise InvalidRequest("quota must be positive and max_uses at least 1.")
    expiry = parse_expiry(expires_at)
    terms = grant_terms.parse(grant)
    batch_id = f"b-{uuid.uuid4().hex}"
    at = clock.iso()
    plaintexts = [plaintext.generate() for _ in range(count)]
    key = code_hash_key()
    with RedemptionCode.batch_write() as batch:
        for code in plaintexts:
            batch.save(
                RedemptionCode(
                    code_id=plaintext.code_id(code, key),
                    list_key=LIST_KEY,
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
            )
    record_audit(
        admin_id,
        "redemption_codes.create",
        batch_id,
        {
            "name": name,
            "quota": quota,
            "count": count,
            "max_uses": max_uses,
            "expires_at": expiry,
            "grant": terms,
        },
    )
    return CreatedBatch(batch_id=batch_id, codes=[plaintext.format_code(p) for p in plaintexts])


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
    page = newest_first(
        RedemptionCode.by_created.query, "list_key", LIST_KEY, limit, cursor, render_code
    )
    record_audit(
        admin_id, "redemption_codes.list", "", {"limit": limit, "returned": len(page["items"])}
    )
    return page


def disable(admin_id: str, code_id: str) -> dict[str, Any]:
    """Mark a code disabled (idempotent); an unknown code is NotFound."""
    if not plaintext.is_code_id(code_id):
        raise NotFound("No such code.")
    at = clock.iso()
    code = RedemptionCode(code_id=code_id)
    try:
        code.update(
            actions=[
                RedemptionCode.status.set("disabled"),
                # A repeated disable keeps the first time.
                RedemptionCode.disabled_at.set(RedemptionCode.disabled_at | at),
            ],
            condition=RedemptionCode.code_id.exists(),
        )
    except UpdateError as exc:
        if exc.cause_response_code == "ConditionalCheckFailedException":
            raise NotFound("No such code.") from exc
        raise
    record_audit(admin_id, "redemption_codes.disable", code_id)
    return render_code(code)
