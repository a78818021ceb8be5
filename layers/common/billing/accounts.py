"""Accounts: creation (once, with an optional inviter), reading, ledger and usage history."""

from __future__ import annotations

from typing import Any

from pynamodb.exceptions import DoesNotExist, TransactWriteError
from pynamodb.transactions import TransactWrite

from billing import clock, db, referral_codes
from billing.errors import AccountNotFound, InvalidReferralCode
from billing.models import Account, LedgerEntry, ReferralCode, UsageRecord
from billing.pagination import newest_first

_CODE_ATTEMPTS = 8


def render_account(account: Account) -> dict[str, Any]:
    return {
        "user_id": account.user_id,
        "quota": int(account.quota),
        "used_quota": int(account.used_quota),
        "request_count": int(account.request_count),
        "held_quota": int(account.held_quota),
        "aff_code": account.aff_code,
        "aff_quota": int(account.aff_quota),
        "aff_history_quota": int(account.aff_history_quota),
        "aff_count": int(account.aff_count),
        "inviter_id": account.inviter_id,
        "status": account.status,
        "created_at": account.created_at,
    }


def get_account(user_id: str) -> Account:
    try:
        return Account.get(user_id, consistent_read=True)
    except DoesNotExist as exc:
        raise AccountNotFound() from exc


def find_inviter(referral_code: str) -> str:
    """The user id owning a referral code; InvalidReferralCode for anything else."""
    code = referral_codes.normalise(referral_code)
    if not referral_codes.is_well_formed(code):
        raise InvalidReferralCode()
    try:
        return ReferralCode.get(code).user_id
    except DoesNotExist as exc:
        raise InvalidReferralCode() from exc


def create_account(user_id: str, referral_code: str | None) -> tuple[Account, bool]:
    """Create the account once; returns (account, created).

    An existing account is returned unchanged (its inviter can never change). Racing creates
    of one user end with one account: the put is conditional on the account not existing.
    """
    try:
        return get_account(user_id), False
    except AccountNotFound:
        pass
    # An empty field (a form left blank) means no referral, not a bad one.
    inviter_id = find_inviter(referral_code) if referral_code and referral_code.strip() else None
    for _ in range(_CODE_ATTEMPTS):
        at = clock.iso()
        account = Account(
            user_id=user_id,
            aff_code=referral_codes.new_code(),
            inviter_id=inviter_id,
            created_at=at,
            updated_at=at,
        )
        code = ReferralCode(code=account.aff_code, user_id=user_id, created_at=at)
        try:
            with TransactWrite(connection=db.connection()) as transaction:
                transaction.save(code, condition=ReferralCode.code.does_not_exist())
                transaction.save(account, condition=Account.user_id.does_not_exist())
                if inviter_id:
                    # The version bump makes a concurrent ledger write on the inviter re-read.
                    transaction.update(
                        Account(user_id=inviter_id),
                        actions=[Account.aff_count.add(1), Account.version.add(1)],
                        condition=Account.user_id.exists(),
                    )
        except TransactWriteError as exc:
            reasons = [r.code if r else None for r in (exc.cancellation_reasons or [])]
            # Item order as sent: puts (code, account), then the inviter update.
            if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                return get_account(user_id), False
            if len(reasons) > 2 and reasons[2] == "ConditionalCheckFailed":
                raise InvalidReferralCode() from exc
            if reasons and reasons[0] == "ConditionalCheckFailed":
                continue  # referral code collision: draw another
            if "TransactionConflict" in reasons:
                continue
            raise
        return account, True
    raise RuntimeError("could not allocate a unique referral code")


def render_entry(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "id": entry.entry_id,
        "kind": entry.kind,
        "balance": entry.balance,
        "delta": int(entry.delta),
        "balance_after": int(entry.balance_after),
        "ref": entry.ref,
        "created_at": entry.created_at,
    }


def list_ledger(user_id: str, limit: int, cursor: str | None) -> dict[str, Any]:
    return newest_first(LedgerEntry.by_seq.query, "user_id", user_id, limit, cursor, render_entry)


def render_usage(record: UsageRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "model": record.model,
        "group": record.group,
        "prompt_tokens": int(record.prompt_tokens),
        "completion_tokens": int(record.completion_tokens),
        "quota": int(record.quota),
        "hold_quota": int(record.hold_quota),
        "status": record.status,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def list_usage(user_id: str, limit: int, cursor: str | None) -> dict[str, Any]:
    return newest_first(UsageRecord.by_user.query, "user_id", user_id, limit, cursor, render_usage)
