"""Redemption codes: generation, normalisation, check symbol and the keyed hash they are stored by.

A code is 19 random Crockford base32 symbols (95 bits from `secrets`) plus one check symbol,
shown in groups of four: `XXXX-XXXX-XXXX-XXXX-XXXX`. The check symbol is Crockford's mod-37
check of the 19-symbol number; codes whose check would be one of Crockford's five extra
symbols (`*~$=U`, awkward to type) are drawn again, so every symbol of a code is in the plain
alphabet (this costs 0.2 bits). Because 37 is a prime above 32, every single wrong symbol and
every swap of two adjacent symbols changes the check, so typos are rejected before any lookup.

The store never sees a plaintext code: its key is `code_id`, the hex HMAC-SHA256 of the
normalised code under the secret `billing.secrets.code_hash_key()`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from billing import secrets as billing_secrets

# Crockford's base32 alphabet: no I, L, O or U, so nothing reads as another symbol.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CHECK_MODULUS = 37
DATA_LENGTH = 19  # 95 bits
LENGTH = DATA_LENGTH + 1
GROUP = 4
ENTROPY_BITS = DATA_LENGTH * 5

_VALUES = {symbol: value for value, symbol in enumerate(ALPHABET)}
_CONFUSABLE = str.maketrans("ILO", "110")
_SEPARATORS = re.compile(r"[\s\-]+")
CODE_ID_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class MalformedCode(ValueError):
    """Not a code: wrong length, a symbol outside the alphabet, or a failed check."""


def _number(symbols: str) -> int:
    value = 0
    for symbol in symbols:
        value = value * 32 + _VALUES[symbol]
    return value


def check_symbol(data: str) -> str | None:
    """The check symbol of `data`, or None when its check is not in the plain alphabet."""
    check = _number(data) % CHECK_MODULUS
    return ALPHABET[check] if check < len(ALPHABET) else None


def generate() -> str:
    """A new code in canonical form (20 symbols, no separators)."""
    while True:
        data = "".join(secrets.choice(ALPHABET) for _ in range(DATA_LENGTH))
        check = check_symbol(data)
        if check is not None:
            return data + check


def format_code(code: str) -> str:
    """Groups of four for people: `XXXX-XXXX-XXXX-XXXX-XXXX`."""
    return "-".join(code[start : start + GROUP] for start in range(0, len(code), GROUP))


def normalise(text: str) -> str:
    """What a person typed, in canonical form: upper case, no spaces or hyphens, I/L→1, O→0.

    Raises MalformedCode unless the result is a well-formed code with a matching check symbol.
    """
    code = _SEPARATORS.sub("", text).upper().translate(_CONFUSABLE)
    if len(code) != LENGTH or any(symbol not in _VALUES for symbol in code):
        raise MalformedCode()
    if check_symbol(code[:DATA_LENGTH]) != code[DATA_LENGTH]:
        raise MalformedCode()
    return code


def code_id(code: str, key: bytes | None = None) -> str:
    """The stored key of a code: hex HMAC-SHA256 of its canonical form under the secret key."""
    canonical = normalise(code)
    secret = key if key is not None else billing_secrets.code_hash_key()
    return hmac.new(secret, canonical.encode("ascii"), hashlib.sha256).hexdigest()


def is_code_id(value: str) -> bool:
    return bool(CODE_ID_PATTERN.match(value))
