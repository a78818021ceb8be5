"""Domain errors: each carries the stable error code and HTTP status of API.md."""

from __future__ import annotations


class DomainError(Exception):
    """A failure the caller can act on; `code` is part of the API contract."""

    code = "invalid_request"
    status = 400
    message = "The request is invalid."

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.headers = headers or {}


class InvalidRequest(DomainError):
    code = "invalid_request"
    message = "The request is invalid."


class PayloadTooLarge(DomainError):
    code = "payload_too_large"
    status = 413
    message = "The request body is larger than 64 KiB."


class Forbidden(DomainError):
    code = "forbidden"
    status = 403
    message = "This route is for administrators."


class NotFound(DomainError):
    code = "not_found"
    status = 404
    message = "Not found."


class AccountNotFound(DomainError):
    code = "account_not_found"
    status = 404
    message = "No account exists for this user yet; create it with POST /account."


class AccountExists(DomainError):
    """Internal: a create lost the race to another create of the same account."""

    code = "account_exists"
    status = 409
    message = "The account already exists."


class InvalidReferralCode(DomainError):
    code = "invalid_referral_code"
    message = "The referral code does not exist."


class InvalidAmount(DomainError):
    code = "invalid_amount"
    message = "The amount is not a whole number within the allowed range."


class MethodUnavailable(DomainError):
    code = "method_unavailable"
    message = "This payment method is not available."


class RedeemFailed(DomainError):
    code = "redeem_failed"
    message = "This code cannot be redeemed."


class TooManyAttempts(DomainError):
    code = "too_many_attempts"
    status = 429
    message = "Too many failed attempts; try again later."

    def __init__(self, retry_after: int, message: str | None = None):
        super().__init__(
            message or f"Too many failed attempts; try again in {retry_after} seconds.",
            headers={"Retry-After": str(retry_after)},
        )
        self.retry_after = retry_after


class TransferBelowMinimum(DomainError):
    code = "transfer_below_minimum"
    message = "The amount is below the minimum transfer."


class InsufficientAffQuota(DomainError):
    code = "insufficient_aff_quota"
    message = "The amount is more than your reward quota."


class InsufficientQuota(DomainError):
    code = "insufficient_quota"
    message = "The balance is too low."


class ProviderError(DomainError):
    """The payment provider refused or could not be reached."""

    code = "provider_error"
    status = 502
    message = "The payment provider could not create the payment; try again."


class SettingsError(Exception):
    """Invalid settings: raised at load, never silently replaced by defaults."""


class InvalidEvent(DomainError):
    """A usage event that cannot be metered as sent (missing fields, bad values, no hold)."""

    code = "invalid_event"
    message = "The usage event is invalid."


class UnknownModel(DomainError):
    """A model with neither a ratio nor a price: never metered as free usage."""

    code = "unknown_model"
    message = "The model has no price."


class IdempotencyKeyReused(DomainError):
    code = "idempotency_key_reused"
    status = 409
    message = "This Idempotency-Key was used for another request; use a new key."


class IdempotencyKeyInProgress(DomainError):
    """A request under the same key is still running; retrying it then gets that result."""

    code = "idempotency_key_in_progress"
    status = 409
    message = "A request with this Idempotency-Key is still in progress; retry shortly."

    def __init__(self, message: str | None = None):
        super().__init__(message, headers={"Retry-After": "1"})
