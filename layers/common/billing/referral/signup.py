"""Account creation: once per user, with its own referral code and, optionally, the inviter
whose referral code it was created with (the inviter is bound at creation and never changes)."""

from __future__ import annotations

from pynamodb.exceptions import DoesNotExist, TransactWriteError
from pynamodb.transactions import TransactWrite

from billing import clock, db
from billing.accounts import get_account
from billing.errors import AccountNotFound, InvalidReferralCode
from billing.models import Account, ReferralCode
from billing.referral import codes

_CODE_ATTEMPTS = 8
# What the referral_code field accepts as typed (spaces and hyphens included); anything
# longer cannot be a code, so it is an unknown code like any other.
MAX_TYPED_LENGTH = 64


def find_inviter(referral_code: str) -> str:
    """The user id owning a referral code; InvalidReferralCode for anything else."""
    if len(referral_code) > MAX_TYPED_LENGTH:
        raise InvalidReferralCode()
    code = codes.normalise(referral_code)
    if not codes.is_well_formed(code):
        raise InvalidReferralCode()
    try:
        return ReferralCode.get(code, consistent_read=True).user_id
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
            aff_code=codes.new_code(),
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
