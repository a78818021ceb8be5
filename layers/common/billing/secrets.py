"""Secrets from Secrets Manager (cached), named by the ARNs the template passes in."""

from __future__ import annotations

import json
import os
from typing import Any

SECRET_MAX_AGE = 300


def _secret(env: str) -> str:
    arn = os.environ.get(env)
    if not arn:
        raise RuntimeError(f"{env} is not set for this function")
    from aws_lambda_powertools.utilities import parameters

    return str(parameters.get_secret(arn, max_age=SECRET_MAX_AGE))


def provider_secrets() -> dict[str, str]:
    """Provider credentials: a JSON object; an empty value means 'not configured'."""
    value: Any = json.loads(_secret("PROVIDER_SECRETS_ARN"))
    if not isinstance(value, dict):
        raise RuntimeError("provider secrets are not a JSON object")
    return {str(key): str(item or "") for key, item in value.items()}


def code_hash_key() -> bytes:
    """The HMAC key under which redemption codes are stored."""
    return _key("CODE_HASH_SECRET_ARN", "the code hash key")


def cursor_key() -> bytes:
    """The HMAC key that signs list cursors (a cursor is honoured only where it was issued)."""
    return _key("CURSOR_SECRET_ARN", "the cursor key")


def _key(env: str, what: str) -> bytes:
    key = _secret(env)
    if len(key) < 32:
        raise RuntimeError(f"{what} is too short")
    return key.encode()
