"""The dev OIDC issuer and the HTTP API JWT authorizer emulation.

The issuer signs RS256 tokens with a key made at each stack start; the authorizer checks
tokens the way API Gateway's JWT authorizer does (signature by kid, iss, aud or client_id,
exp, nbf, scopes) and passes claims on as strings.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

DEV_AUDIENCE = "local-console"
TOKEN_LIFETIME_SECONDS = 3600


def _b64uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class DevIssuer:
    def __init__(self, issuer: str, audience: str = DEV_AUDIENCE) -> None:
        self.issuer = issuer
        self.audience = audience
        self.kid = f"local-{uuid.uuid4().hex[:12]}"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_key = self._key.public_key()

    def issue(
        self,
        sub: str,
        *,
        admin: bool = False,
        email: str | None = None,
        expires_in: int = TOKEN_LIFETIME_SECONDS,
        claims: dict[str, Any] | None = None,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "auth_time": now,
            "exp": now + expires_in,
            "token_use": "id",
            "cognito:username": sub,
        }
        if admin:
            payload["cognito:groups"] = ["admin"]
        if email is not None:
            payload["email"] = email
            payload["email_verified"] = True
        payload.update(claims or {})
        return jwt.encode(payload, self._key, algorithm="RS256", headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        numbers = self.public_key.public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "alg": "RS256",
                    "use": "sig",
                    "kid": self.kid,
                    "n": _b64uint(numbers.n),
                    "e": _b64uint(numbers.e),
                }
            ]
        }

    def openid_configuration(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/.well-known/jwks.json",
            "token_endpoint": f"{self.issuer}/token",
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        }


@dataclass(frozen=True)
class JwtAuthorizerConfig:
    name: str
    identity_header: str  # lower-case header name
    issuer: str
    audiences: tuple[str, ...]


class Unauthorized(Exception):
    """Rejected by the authorizer; the message goes only to the WWW-Authenticate header."""


def claim_string(value: Any) -> str:
    # API Gateway hands claims to the integration as strings; arrays look like "[a b]".
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(claim_string(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def authorize(
    config: JwtAuthorizerConfig,
    issuer: DevIssuer,
    header_value: str | None,
    required_scopes: list[str] | None,
) -> tuple[dict[str, str], list[str] | None]:
    """The claims (as strings) and scopes of a valid token, or Unauthorized."""
    if not header_value:
        raise Unauthorized("missing token")
    token = header_value.strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Unauthorized("malformed token") from exc
    if header.get("alg") != "RS256" or header.get("kid") != issuer.kid:
        raise Unauthorized("unknown signing key")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            issuer.public_key,
            algorithms=["RS256"],
            options={"verify_aud": False, "verify_iss": False, "require": ["exp"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("the token has expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("invalid token") from exc
    if claims.get("iss") != config.issuer:
        raise Unauthorized("unexpected issuer")
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if not (set(map(str, audiences)) & set(config.audiences)) and (
        claims.get("client_id") not in config.audiences
    ):
        raise Unauthorized("unexpected audience")
    scopes: list[str] | None = None
    scope_claim = claims.get("scope", claims.get("scp"))
    if scope_claim is not None:
        scopes = scope_claim.split() if isinstance(scope_claim, str) else list(scope_claim)
    if required_scopes and not set(required_scopes) & set(scopes or []):
        raise PermissionError("insufficient scope")
    return {key: claim_string(value) for key, value in claims.items()}, scopes
