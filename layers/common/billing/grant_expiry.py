"""The expiry sweeper: writes off each expired grant's remainder, once.

Expired grants are never drawn from, even before this runs (billing.grants); the sweeper
makes the balance say so. It reads the sparse, sharded `expiring` index of the grants table
for grants due by now, and for each one still on its account with a positive remainder
applies one `expiry` ledger entry (id `expiry#<grant_id>`, delta = -remaining) that removes
it from the account item and takes the record off the index, in one transaction. The entry
id and the account's version condition make it happen once under any concurrency or re-run.
A grant that is gone (written off, exhausted and dropped, merged) or exhausted just leaves
the index; one whose expiry moved later (a merge at the bound) is indexed at its new expiry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from aws_lambda_powertools import Logger
from pynamodb.exceptions import UpdateError
from pynamodb.expressions.update import Action

from billing import clock, ledger
from billing import grants as grant_math
from billing.errors import AccountNotFound
from billing.models import GrantRecord

logger = Logger(child=True)


def due(now: int, until: int | None = None) -> Iterator[tuple[str, str]]:
    """(user_id, grant_id) of indexed grants due by `now` (or within (now, until])."""
    for shard in range(ledger.EXPIRY_SHARDS):
        condition = (
            GrantRecord.due_at <= now
            if until is None
            else GrantRecord.due_at.between(now + 1, until)
        )
        for item in GrantRecord.expiring.query(f"e#{shard}", condition):
            yield item.user_id, item.grant_id


# What the sweeper calls for each grant with a remainder that expires within 3 days:
# (user_id, grant, account quota, now) -> whether a notice went out. The handler passes
# billing.events.grant_notices.notify (the base does not import the events subdomain).
ExpiringHook = Callable[[str, grant_math.Grant, int, int], bool]


def sweep(
    moment: datetime | None = None, on_expiring: ExpiringHook | None = None
) -> dict[str, int]:
    moment = moment or clock.now()
    now = int(moment.timestamp())
    written = skipped = 0
    for user_id, grant_id in list(dict.fromkeys(due(now))):
        if _write_off(user_id, grant_id, now):
            written += 1
        else:
            skipped += 1
    soon = notified = 0
    for user_id, grant_id in dict.fromkeys(due(now, now + grant_math.EXPIRING_NOTICE_SECONDS)):
        try:
            account = ledger.read_account(user_id)
        except AccountNotFound:
            continue
        grant = ledger.account_grants(account, now).get(grant_id)
        if grant is not None and grant.remaining > 0:
            soon += 1
            if on_expiring is not None:
                notified += on_expiring(user_id, grant, int(account.quota), now)
    return {
        "written_off": written,
        "unindexed": skipped,
        "expiring_soon": soon,
        "notices_sent": notified,
    }


def _write_off(user_id: str, grant_id: str, now: int) -> bool:
    """Write off one due grant; False when there was nothing to write off."""
    record = GrantRecord(user_id=user_id, grant_id=grant_id)
    try:
        account = ledger.read_account(user_id)
    except AccountNotFound:
        _reindex(record, None)
        return False
    grant = ledger.account_grants(account, now).get(grant_id)
    if grant is None or grant.remaining <= 0:
        _reindex(record, None)
        return False
    if not grant.expired(now):
        _reindex(record, grant.expires_at)
        return False
    change = ledger.Change(
        user_id=user_id,
        entry_id=f"expiry#{grant_id}",
        kind=ledger.EntryKind.EXPIRY,
        delta=-grant.remaining,
        ref=grant_id,
        may_go_negative=True,
        expire_grant=grant_id,
    )
    unindex = ledger.TxOp(
        label=f"grant:{grant_id}",
        op="update",
        model=record,
        actions=[GrantRecord.expiry_shard.remove(), GrantRecord.due_at.remove()],
        condition=GrantRecord.grant_id.exists(),
    )
    try:
        ledger.apply([change], [unindex], accounts={user_id: account})
    except ledger.DuplicateEntry:
        _reindex(record, None)  # a concurrent sweep wrote it off
        return False
    logger.info(
        "grant expired",
        extra={"user_id": user_id, "grant_id": grant_id, "written_off": grant.remaining},
    )
    return True


def _reindex(record: GrantRecord, expires_at: int | None) -> None:
    actions: list[Action]
    if expires_at is None:
        actions = [GrantRecord.expiry_shard.remove(), GrantRecord.due_at.remove()]
    else:
        actions = [
            GrantRecord.expiry_shard.set(ledger.expiry_shard(record.grant_id)),
            GrantRecord.due_at.set(expires_at),
        ]
    try:
        record.update(actions=actions, condition=GrantRecord.grant_id.exists())
    except UpdateError as exc:
        if getattr(exc, "cause_response_code", None) != "ConditionalCheckFailedException":
            raise
