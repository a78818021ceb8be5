"""Referral codes: unique per account, unambiguous to read aloud or type."""

from __future__ import annotations

import secrets

# Crockford's base32 alphabet: no I, L, O or U, so nothing reads as another symbol.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
LENGTH = 10  # 50 bits: collisions are rare, and retried by the conditional put anyway


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def normalise(code: str) -> str:
    """Accept what a person types: case, spaces and hyphens, I/L for 1 and O for 0."""
    cleaned = code.strip().upper().replace("-", "").replace(" ", "")
    return cleaned.translate(str.maketrans("ILO", "110"))


def is_well_formed(code: str) -> bool:
    return 4 <= len(code) <= 32 and all(char in ALPHABET for char in code)
