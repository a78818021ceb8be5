"""Who is calling: the JWT claims that API Gateway's authorizer passes to the handler.

API Gateway has already verified the token; here we only read `sub` (the user id) and the
`cognito:groups` claim, which arrives as a string such as "[admin other]" (HTTP API's way of
passing array claims) or, from other issuers and in tests, as a list or comma-separated text.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from aws_lambda_powertools import Logger

from billing.errors import DomainError, Forbidden
from billing.facts import ErrorCode

logger = Logger(child=True)

ADMIN_GROUP = "admin"


class Unauthorized(DomainError):
    code = ErrorCode.UNAUTHORIZED.value
    status = 401
    message = "A valid token is required."


class Principal(NamedTuple):
    user_id: str
    is_admin: bool

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden()


def parse_groups(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, list | tuple | set | frozenset):
        return frozenset(str(item) for item in value)
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return frozenset(part.strip().strip('"') for part in text.replace(",", " ").split() if part)


def principal_from_claims(claims: dict[str, Any] | None) -> Principal:
    claims = claims or {}
    user_id = str(claims.get("sub") or "").strip()
    if not user_id or len(user_id) > 128:
        raise Unauthorized()
    # Every later log line of the request names its caller, by a hash: logs are not for PII.
    logger.append_keys(user=user_ref(user_id))
    return Principal(
        user_id=user_id, is_admin=ADMIN_GROUP in parse_groups(claims.get("cognito:groups"))
    )


def user_ref(user_id: str) -> str:
    """The user id as logs carry it: a short hash that correlates lines without naming anyone."""
    return "u:" + hashlib.sha256(user_id.encode()).hexdigest()[:16]


def principal_from_event(event: dict[str, Any]) -> Principal:
    """Principal of an API Gateway HTTP API (payload v2) event with a JWT authorizer."""
    context = event.get("requestContext") or {}
    jwt = (context.get("authorizer") or {}).get("jwt") or {}
    return principal_from_claims(jwt.get("claims"))
