"""The optional `grant` object of a redemption code or an admin adjustment (API.md "Credit
grants"): `{"priority"?: 0..100, "expires_in_days"? | "expires_at"?}`, validated strictly
(integers only, one expiry at most, never in the past) before anything is written."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from billing import clock
from billing import grants as grant_math
from billing.errors import InvalidRequest

MAX_EXPIRY_DAYS = 3650
_FIELDS = {"priority", "expires_in_days", "expires_at"}


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest(f"grant.{name} must be an integer from {low} to {high}.")
    return value


def parse(raw: Any) -> dict[str, Any] | None:
    """The stored form of a `grant` object: {"priority"?, "expires_in_days"?, "expires_at"?}
    with expires_at as canonical ISO; InvalidRequest for anything else."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidRequest("grant must be an object.")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"grant has no field '{unknown[0]}'.")
    if "expires_in_days" in raw and "expires_at" in raw:
        raise InvalidRequest("grant takes expires_in_days or expires_at, not both.")
    stored: dict[str, Any] = {}
    if "priority" in raw:
        stored["priority"] = _integer(
            raw["priority"], "priority", grant_math.MIN_PRIORITY, grant_math.MAX_PRIORITY
        )
    if "expires_in_days" in raw:
        stored["expires_in_days"] = _integer(
            raw["expires_in_days"], "expires_in_days", 1, MAX_EXPIRY_DAYS
        )
    if "expires_at" in raw:
        value = raw["expires_at"]
        if not isinstance(value, str) or not 1 <= len(value) <= 64:
            raise InvalidRequest("grant.expires_at must be an ISO-8601 time.")
        try:
            moment = clock.parse_iso(value)
        except ValueError as exc:
            raise InvalidRequest("grant.expires_at must be an ISO-8601 time.") from exc
        if moment <= clock.now():
            raise InvalidRequest("grant.expires_at must be in the future.")
        if moment > clock.now() + timedelta(days=MAX_EXPIRY_DAYS):
            raise InvalidRequest(f"grant.expires_at must be within {MAX_EXPIRY_DAYS} days.")
        stored["expires_at"] = clock.iso(moment)
    return stored


def terms(source: str, stored: Any, now_epoch: int | None = None) -> grant_math.Terms:
    """The terms of a credit made now from a stored `grant` object."""
    spec = dict(stored or {})
    now = int(clock.now().timestamp()) if now_epoch is None else now_epoch
    expires_at: int | None = None
    if spec.get("expires_in_days") is not None:
        expires_at = now + int(spec["expires_in_days"]) * 86400
    elif spec.get("expires_at"):
        expires_at = int(clock.parse_iso(str(spec["expires_at"])).timestamp())
    priority = int(spec.get("priority", grant_math.DEFAULT_PRIORITY))
    return grant_math.Terms(source, priority, expires_at)
