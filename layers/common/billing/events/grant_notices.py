"""`grant.expiring`: one event per grant and expiry, 3 days ahead, put by the expiry sweeper.

The notice is claimed on the grant's record before it is put: a conditional write sets
`notice_for` (the expiry it announces) and `notice_claimed_at`, so concurrent sweeps put it
once. The claim stays pending (`notice_claimed_at` present) until the put succeeded; a put
that fails releases it, so the next sweep tries again, and a claim left pending by a sweep
that died is taken over once it is older than the sweeper's timeout (same event id, so a
consumer that saw the first put can drop the second). A grant whose expiry moves later (a
merge at the bound) gets a notice for its new expiry.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger
from pynamodb.exceptions import UpdateError

from billing import clock, metrics
from billing import grants as grant_math
from billing.events import crossing, publisher
from billing.models import GrantRecord

logger = Logger(child=True)

GRANT_EXPIRING = "grant.expiring"
STALE_CLAIM_SECONDS = 900  # longer than the sweeper's Timeout (300 s)


def notice(user_id: str, grant: grant_math.Grant, quota: int) -> dict[str, Any]:
    assert grant.expires_at is not None
    return crossing.make_event(
        GRANT_EXPIRING,
        user_id,
        f"{grant.grant_id}@{grant.expires_at}",
        quota,
        clock.iso(),
        grant_id=grant.grant_id,
        source=grant.source,
        remaining=grant.remaining,
        expires_at=datetime.fromtimestamp(grant.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def notify(user_id: str, grant: grant_math.Grant, quota: int, now: int) -> bool:
    """The expiry sweeper's hook: send, and when the put fails, log and count it
    (GrantNoticesFailed, alarmed) and go on; the next sweep (5 minutes on) retries it."""
    try:
        return send(user_id, grant, quota, now)
    except Exception:
        logger.exception(
            "grant.expiring not put; the next sweep retries it",
            extra={"user_id": user_id, "grant_id": grant.grant_id},
        )
        metrics.count(metrics.Metric.GRANT_NOTICES_FAILED)
        return False


def send(user_id: str, grant: grant_math.Grant, quota: int, now: int) -> bool:
    """Put the grant's notice unless a sweep already did (or is doing it); True if put here.
    Raises when the put fails, after releasing the claim."""
    expires_at = grant.expires_at
    if expires_at is None:
        return False
    record = GrantRecord(user_id=user_id, grant_id=grant.grant_id)
    claimable = GrantRecord.grant_id.exists() & (
        GrantRecord.notice_for.does_not_exist()
        | (GrantRecord.notice_for != expires_at)
        | (GrantRecord.notice_claimed_at < now - STALE_CLAIM_SECONDS)
    )
    claim = [GrantRecord.notice_for.set(expires_at), GrantRecord.notice_claimed_at.set(now)]
    if not _update(record, claim, claimable):
        return False
    ours = (GrantRecord.notice_for == expires_at) & (GrantRecord.notice_claimed_at == now)
    try:
        publisher.publish([notice(user_id, grant, quota)])
    except Exception:
        release = [GrantRecord.notice_for.remove(), GrantRecord.notice_claimed_at.remove()]
        _update(record, release, ours)
        raise
    _update(record, [GrantRecord.notice_claimed_at.remove()], ours)
    return True


def _update(record: GrantRecord, actions: list[Any], condition: Any) -> bool:
    try:
        record.update(actions=actions, condition=condition)
    except UpdateError as exc:
        if getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException":
            return False
        raise
    return True
