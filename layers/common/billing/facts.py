"""The contract's vocabulary, defined once: ledger entry kinds, order statuses, usage record
statuses and error codes (API.md names every value here; renaming one breaks the contract).

This module imports nothing and writes nothing, so anything may use it: the writers (ledger,
orders, metering), the read-only reconciliation, the OpenAPI generator and the tests.
"""

from __future__ import annotations

from enum import StrEnum


class EntryKind(StrEnum):
    """The `kind` of a ledger entry."""

    TOPUP = "topup"
    REDEEM = "redeem"
    REFERRAL_REWARD = "referral_reward"
    REFERRAL_TRANSFER = "referral_transfer"
    USAGE = "usage"
    REFUND = "refund"
    REVERSAL = "reversal"
    ADJUSTMENT = "adjustment"
    SIGNUP_BONUS = "signup_bonus"
    EXPIRY = "expiry"


class OrderStatus(StrEnum):
    """The `status` of a top-up order."""

    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"
    EXPIRED = "expired"
    REFUNDED = "refunded"
    DISPUTED = "disputed"


class UsageStatus(StrEnum):
    """Metering result statuses and, for the first five, usage record statuses."""

    CHARGED = "charged"
    RESERVED = "reserved"
    SETTLED = "settled"
    RELEASED = "released"
    EXPIRED = "expired"  # record only: the sweeper released the hold (result: released)
    DUPLICATE = "duplicate"  # result only: the same request_id and action again
    REJECTED = "rejected"  # result only: nothing was written (its `error` says why)


# What a usage record may hold, and the statuses of those whose quota was taken (billed).
USAGE_RECORD_STATUSES = frozenset(
    {
        UsageStatus.CHARGED,
        UsageStatus.RESERVED,
        UsageStatus.SETTLED,
        UsageStatus.RELEASED,
        UsageStatus.EXPIRED,
    }
)
BILLED_USAGE_STATUSES = frozenset({UsageStatus.CHARGED, UsageStatus.SETTLED})


class ErrorCode(StrEnum):
    """`error.code` of an error response (billing.errors raises each with its status), and
    `error` of a rejected usage event."""

    INVALID_REQUEST = "invalid_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    ACCOUNT_NOT_FOUND = "account_not_found"
    ACCOUNT_EXISTS = "account_exists"  # internal: a create lost the race to another
    INVALID_REFERRAL_CODE = "invalid_referral_code"
    INVALID_AMOUNT = "invalid_amount"
    METHOD_UNAVAILABLE = "method_unavailable"
    REDEEM_FAILED = "redeem_failed"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    TRANSFER_BELOW_MINIMUM = "transfer_below_minimum"
    INSUFFICIENT_AFF_QUOTA = "insufficient_aff_quota"
    INSUFFICIENT_QUOTA = "insufficient_quota"
    LIMIT_EXCEEDED = "limit_exceeded"
    PROVIDER_ERROR = "provider_error"
    INVALID_EVENT = "invalid_event"
    UNKNOWN_MODEL = "unknown_model"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    IDEMPOTENCY_KEY_IN_PROGRESS = "idempotency_key_in_progress"
    NO_SAVED_CARD = "no_saved_card"
    ORDER_NOT_COMPLETABLE = "order_not_completable"
    REMETER_FAILED = "remeter_failed"
    TRY_AGAIN = "try_again"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    QUEUE_UNAVAILABLE = "queue_unavailable"
    INVALID_SIGNATURE = "invalid_signature"  # a webhook refused (its provider's reply)
