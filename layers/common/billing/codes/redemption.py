"""Redeeming a code: at most `max_uses` times, at most once per user, in one transaction.

A successful redeem costs one consistent BatchGetItem (the code, the account and the user's
and source IP's failure windows) and one TransactWriteItems through `ledger.apply`:
- the code's `uses + 1`, conditioned on it being active, unexpired and below `max_uses`;
- the ledger credit `redeem#<code_id>#<user>` under attribute_not_exists, which is also the
  per-user marker (a second redeem by the same user is a duplicate entry);
- the account's balance, conditioned on the version read in the batch.

Every reason a code cannot be redeemed gives the same RedeemFailed (one body for all, so a
guesser learns nothing) and counts as a failed attempt; the failure limit is enforced before
the code is looked at.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from aws_lambda_powertools import Logger

from billing import clock, db, grant_terms, ledger, metrics, retry
from billing.codes import plaintext, ratelimit
from billing.errors import AccountNotFound, RedeemFailed
from billing.ledger import Change, EntryKind, TxOp
from billing.metrics import Metric
from billing.models import Account, RateLimit, RedemptionCode
from billing.settings import load_settings

logger = Logger(child=True)

_BATCH_GET_ATTEMPTS = 8


class Redeemed(NamedTuple):
    code_id: str
    quota_added: int
    quota: int  # the balance after the credit


class _Reads(NamedTuple):
    code: RedemptionCode | None
    account: Account | None
    limits: dict[str, RateLimit]


def redeem(user_id: str, text: str, source_ip: str) -> Redeemed:
    """Redeem the code `text` typed by `user_id`; raises RedeemFailed, TooManyAttempts or
    AccountNotFound."""
    moment = clock.now()
    now = ratelimit.epoch(moment.timestamp())
    limits = load_settings().limits
    try:
        code_id: str | None = plaintext.code_id(text)
    except plaintext.MalformedCode:
        code_id = None  # a typo or a guess: no lookup, but it counts as a failure
    keys = ratelimit.redeem_keys(user_id, source_ip)
    reads = _read(code_id, user_id, keys)
    windows = ratelimit.windows_by_key(reads.limits, keys)
    ratelimit.enforce(windows, limits, now)
    if reads.account is None:
        raise AccountNotFound()

    reason = _unusable(code_id, reads.code, moment)
    if reason is None and code_id is not None and reads.code is not None:
        try:
            return _apply(user_id, code_id, reads.code, reads.account, moment)
        except ledger.DuplicateEntry:
            reason = "already_redeemed"
        except ledger.ConditionFailed:
            reason = "unusable"  # used up, disabled or expired since the read
    ratelimit.record_failure(windows, limits, now)
    # The reason is for operators; the caller gets one answer for all of them.
    logger.info("redeem failed", extra={"reason": reason, "code_id": code_id})
    metrics.count(Metric.CODES_REFUSED, reason=reason or "unknown")
    raise RedeemFailed()


def _unusable(code_id: str | None, code: RedemptionCode | None, moment: datetime) -> str | None:
    if code_id is None:
        return "malformed"
    if code is None:
        return "unknown"
    if code.status != "active":
        return "disabled"
    if code.expires_at is not None and code.expires_at <= clock.iso(moment):
        return "expired"
    if int(code.uses) >= int(code.max_uses):
        return "used_up"
    return None


def _apply(
    user_id: str, code_id: str, code: RedemptionCode, account: Account, moment: datetime
) -> Redeemed:
    quota = int(code.quota)
    use = TxOp(
        label="code",
        op="update",
        model=code,
        actions=[RedemptionCode.uses.add(1)],
        condition=(RedemptionCode.status == "active")
        & (RedemptionCode.uses < RedemptionCode.max_uses)
        & (
            RedemptionCode.expires_at.does_not_exist()
            | (RedemptionCode.expires_at > clock.iso(moment))
        ),
    )
    credit = Change(
        user_id=user_id,
        entry_id=f"redeem#{code_id}#{user_id}",
        kind=EntryKind.REDEEM,
        delta=quota,
        ref=code.batch_id,
        # A promo code's expiry runs from the redemption (expires_in_days) or is fixed.
        grant=grant_terms.terms("code", _plain(code.grant), int(moment.timestamp())),
    )
    applied = ledger.apply([credit], extra=[use], accounts={user_id: account})
    balance = int(applied.accounts[user_id].quota)
    logger.info("code redeemed", extra={"code_id": code_id, "quota": quota})
    metrics.count(Metric.CODES_REDEEMED)
    return Redeemed(code_id=code_id, quota_added=quota, quota=balance)


def _plain(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    return dict(raw.as_dict() if hasattr(raw, "as_dict") else raw)


def _read(code_id: str | None, user_id: str, limit_keys: tuple[str, ...]) -> _Reads:
    """One consistent BatchGetItem over three tables (plus retries of unprocessed keys)."""
    request: dict[str, dict[str, Any]] = {
        Account.Meta.table_name: {"Keys": [{"user_id": {"S": user_id}}], "ConsistentRead": True},
        RateLimit.Meta.table_name: {
            "Keys": [{"key": {"S": key}} for key in limit_keys],
            "ConsistentRead": True,
        },
    }
    if code_id is not None:
        request[RedemptionCode.Meta.table_name] = {
            "Keys": [{"code_id": {"S": code_id}}],
            "ConsistentRead": True,
        }
    found: dict[str, list[dict[str, Any]]] = {}
    client = db.connection().client
    for attempt in range(_BATCH_GET_ATTEMPTS):
        response = client.batch_get_item(RequestItems=request)
        for table, items in response.get("Responses", {}).items():
            found.setdefault(table, []).extend(items)
        request = response.get("UnprocessedKeys") or {}
        if not request:
            break
        retry.pause(attempt, base=0.02, cap=0.5)
    else:
        raise RuntimeError("DynamoDB kept returning unprocessed keys")

    accounts = [Account.from_raw_data(item) for item in found.get(Account.Meta.table_name, [])]
    code_items = found.get(RedemptionCode.Meta.table_name, [])
    limits = [RateLimit.from_raw_data(item) for item in found.get(RateLimit.Meta.table_name, [])]
    return _Reads(
        code=RedemptionCode.from_raw_data(code_items[0]) if code_items else None,
        account=accounts[0] if accounts else None,
        limits={item.key: item for item in limits},
    )
