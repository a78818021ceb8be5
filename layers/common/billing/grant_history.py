"""Credit grants as the API shows them: the active ones on the account (GET /account), the
whole history (GET /grants, newest first), and which grant holds a given one (a grant merged
at the bound lives on in the grant it merged into)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pynamodb.exceptions import DoesNotExist

from billing import clock, ledger
from billing import grants as grant_math
from billing.models import Account, GrantRecord
from billing.pagination import newest_first


def iso_of(epoch: int | None) -> str | None:
    return None if epoch is None else clock.iso(datetime.fromtimestamp(epoch, UTC))


def render_grant(grant: grant_math.Grant, ref: str = "") -> dict[str, Any]:
    return {
        "grant_id": grant.grant_id,
        "source": grant.source,
        "amount": grant.amount,
        "remaining": grant.remaining,
        "priority": grant.priority,
        "expires_at": iso_of(grant.expires_at),
        "ref": ref,
        "created_at": iso_of(grant.created_at),
    }


def account_view(account: Account) -> dict[str, Any]:
    """What GET /account adds: the active grants (draw order) and what expires within 7 days."""
    moment = clock.now()
    now = int(moment.timestamp())
    held = ledger.account_grants(account, now)
    # The window ends at the 00:00 UTC after 7 days from now: the same answer all day long,
    # so an unchanged account reads the same (and "expires before" names a day boundary).
    before = -(-(now + grant_math.EXPIRING_WINDOW_SECONDS) // 86400) * 86400
    return {
        "grants": [render_grant(grant) for grant in grant_math.active(held, now)],
        "expiring_quota": {
            "quota": grant_math.expiring(held, now, before - now),
            "before": iso_of(before),
        },
    }


def render_record(
    record: GrantRecord, held: dict[str, grant_math.Grant], now: int
) -> dict[str, Any]:
    """A history record with its state now: remaining from the account item (0 once
    exhausted, expired and written off, or merged), `status` saying which."""
    current = held.get(record.grant_id)
    if record.merged_into:
        status, remaining = "merged", 0
    elif current is None:
        status, remaining = ("expired" if record.expires_at is not None else "exhausted"), 0
    else:
        remaining = current.remaining
        status = "expired" if current.expired(now) else ("active" if remaining else "exhausted")
    expires = current.expires_at if current is not None else record.expires_at
    rendered = {
        "grant_id": record.grant_id,
        "source": record.source,
        "amount": int(record.amount),
        "remaining": remaining,
        "priority": int(record.priority),
        "expires_at": iso_of(None if expires is None else int(expires)),
        "ref": record.ref,
        "created_at": record.created_at,
        "status": status,
    }
    if record.merged_into:
        rendered["merged_into"] = record.merged_into
    return rendered


def list_grants(account: Account, limit: int, cursor: str | None) -> dict[str, Any]:
    now = int(clock.now().timestamp())
    held = ledger.account_grants(account, now)
    # by_created is a local index: read strongly, so a new grant shows at once.
    return newest_first(
        GrantRecord.by_created.query,
        "user_id",
        account.user_id,
        limit,
        cursor,
        lambda record: render_record(record, held, now),
        consistent_read=True,
    )


def holder(user_id: str, grant_id: str) -> str:
    """The grant that holds `grant_id` now: itself, or the one it was merged into."""
    try:
        record = GrantRecord.get(user_id, grant_id, consistent_read=True)
    except DoesNotExist:
        return grant_id
    return record.merged_into or grant_id
