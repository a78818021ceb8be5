"""Domain errors: each carries the stable error code and HTTP status of API.md."""

from __future__ import annotations

from billing.facts import ErrorCode


class DomainError(Exception):
    """A failure the caller can act on; `code` is part of the API contract."""

    code: str = ErrorCode.INVALID_REQUEST.value
    status = 400
    message = "The request is invalid."

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.headers = headers or {}


class InvalidRequest(DomainError):
    code = ErrorCode.INVALID_REQUEST.value
    message = "The request is invalid."


class PayloadTooLarge(DomainError):
    code = ErrorCode.PAYLOAD_TOO_LARGE.value
    status = 413
    message = "The request body is larger than 64 KiB."


class Forbidden(DomainError):
    code = ErrorCode.FORBIDDEN.value
    status = 403
    message = "This route is for administrators."


class NotFound(DomainError):
    code = ErrorCode.NOT_FOUND.value
    status = 404
    message = "Not found."


class AccountNotFound(DomainError):
    code = ErrorCode.ACCOUNT_NOT_FOUND.value
    status = 404
    message = "No account exists for this user yet; create it with POST /account."


class AccountExists(DomainError):
    """Internal: a create lost the race to another create of the same account."""

    code = ErrorCode.ACCOUNT_EXISTS.value
    status = 409
    message = "The account already exists."


class InvalidReferralCode(DomainError):
    code = ErrorCode.INVALID_REFERRAL_CODE.value
    message = "The referral code does not exist."


class InvalidAmount(DomainError):
    code = ErrorCode.INVALID_AMOUNT.value
    message = "The amount is not a whole number within the allowed range."


class MethodUnavailable(DomainError):
    code = ErrorCode.METHOD_UNAVAILABLE.value
    message = "This payment method is not available."


class RedeemFailed(DomainError):
    code = ErrorCode.REDEEM_FAILED.value
    message = "This code cannot be redeemed."


class TooManyAttempts(DomainError):
    code = ErrorCode.TOO_MANY_ATTEMPTS.value
    status = 429
    message = "Too many failed attempts; try again later."

    def __init__(self, retry_after: int, message: str | None = None):
        super().__init__(
            message or f"Too many failed attempts; try again in {retry_after} seconds.",
            headers={"Retry-After": str(retry_after)},
        )
        self.retry_after = retry_after


class TransferBelowMinimum(DomainError):
    code = ErrorCode.TRANSFER_BELOW_MINIMUM.value
    message = "The amount is below the minimum transfer."


class InsufficientAffQuota(DomainError):
    code = ErrorCode.INSUFFICIENT_AFF_QUOTA.value
    message = "The amount is more than your reward quota."


class InsufficientQuota(DomainError):
    code = ErrorCode.INSUFFICIENT_QUOTA.value
    message = "The balance is too low."


class LimitExceeded(DomainError):
    """A charge or reserve would take a spend limit's window above its max_quota."""

    code = ErrorCode.LIMIT_EXCEEDED.value
    message = "A spend limit of the account or key would be exceeded."


class ProviderError(DomainError):
    """The payment provider refused or could not be reached."""

    code = ErrorCode.PROVIDER_ERROR.value
    status = 502
    message = "The payment provider could not create the payment; try again."


class SettingsError(Exception):
    """Invalid settings: raised at load, never silently replaced by defaults."""


class InvalidEvent(DomainError):
    """A usage event that cannot be metered as sent (missing fields, bad values, no hold)."""

    code = ErrorCode.INVALID_EVENT.value
    message = "The usage event is invalid."


class UnknownModel(DomainError):
    """A model with neither a ratio nor a price: never metered as free usage."""

    code = ErrorCode.UNKNOWN_MODEL.value
    message = "The model has no price."


class IdempotencyKeyReused(DomainError):
    code = ErrorCode.IDEMPOTENCY_KEY_REUSED.value
    status = 409
    message = "This Idempotency-Key was used for another request; use a new key."


class IdempotencyKeyInProgress(DomainError):
    """A request under the same key is still running; retrying it then gets that result."""

    code = ErrorCode.IDEMPOTENCY_KEY_IN_PROGRESS.value
    status = 409
    message = "A request with this Idempotency-Key is still in progress; retry shortly."

    def __init__(self, message: str | None = None):
        super().__init__(message, headers={"Retry-After": "1"})
