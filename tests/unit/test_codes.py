"""Redemption codes: entropy and format, normalisation, check symbol, keyed hash."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest
from billing.codes import plaintext as codes
from billing.codes.plaintext import ALPHABET, MalformedCode
from hypothesis import given
from hypothesis import strategies as st

FORMAT = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){4}$")
KEY = b"k" * 40


def make_code(data: str) -> str:
    check = codes.check_symbol(data)
    assert check is not None
    return data + check


# 19 data symbols whose check lands in the plain alphabet (drawn like generate() does).
data_strings = st.text(alphabet=ALPHABET, min_size=19, max_size=19).filter(
    lambda data: codes.check_symbol(data) is not None
)


def test_codes_have_at_least_80_bits_from_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    assert codes.ENTROPY_BITS >= 80
    drawn: list[str] = []
    real_choice = codes.secrets.choice

    def choice(alphabet: str) -> str:
        assert alphabet == ALPHABET  # 32 symbols: 5 bits per draw
        symbol = real_choice(alphabet)
        drawn.append(symbol)
        return symbol

    monkeypatch.setattr(codes.secrets, "choice", choice)
    code = codes.generate()
    # Every data symbol is one draw from `secrets` (retries draw a whole new code).
    assert len(drawn) % codes.DATA_LENGTH == 0
    assert code[: codes.DATA_LENGTH] == "".join(drawn[-codes.DATA_LENGTH :])


def test_generated_codes_are_unique_well_formed_and_use_every_symbol_everywhere() -> None:
    generated = [codes.generate() for _ in range(2000)]
    assert len(set(generated)) == len(generated)
    for code in generated:
        assert len(code) == codes.LENGTH
        assert FORMAT.match(codes.format_code(code))
        assert codes.normalise(code) == code
    # With 2000 codes each data position shows all 32 symbols (a stuck position would not).
    for position in range(codes.DATA_LENGTH):
        assert {code[position] for code in generated} == set(ALPHABET)


def test_format_is_groups_of_four() -> None:
    code = codes.generate()
    formatted = codes.format_code(code)
    assert FORMAT.match(formatted)
    assert formatted.replace("-", "") == code


def test_normalisation_accepts_what_people_type() -> None:
    data = next(
        candidate
        for candidate in ("0123456789ABCDEFGHJ", "1023456789ABCDEFGHK", "0113456789ABCDEFGHM")
        if codes.check_symbol(candidate) is not None
    )
    code = make_code(data)
    formatted = codes.format_code(code)
    typed = [
        formatted,
        formatted.lower(),
        code.lower(),
        " " + " ".join(formatted.split("-")) + "\t",
        formatted.replace("0", "O").replace("1", "I"),
        formatted.replace("0", "o").replace("1", "l"),
        formatted.replace("1", "L").replace("-", "--"),
    ]
    for text in typed:
        assert codes.normalise(text) == code, text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ABCD",
        "0123-4567-89AB-CDEF-GHJ",  # one short
        "0123-4567-89AB-CDEF-GHJKM",  # one long
        "U123-4567-89AB-CDEF-GHJK",  # U is not a symbol
        "0123_4567_89AB_CDEF_GHJK",
        "0123-4567-89AB-CDEF-GHJ*",  # Crockford's extra check symbols are never issued
        "\uff10\uff11\uff12\uff13-4567-89AB-CDEF-GHJK",  # full-width digits
    ],
)
def test_malformed_text_is_rejected(text: str) -> None:
    with pytest.raises(MalformedCode):
        codes.normalise(text)


@given(data_strings, st.integers(0, codes.LENGTH - 1), st.sampled_from(ALPHABET))
def test_check_symbol_catches_every_single_symbol_typo(
    data: str, position: int, symbol: str
) -> None:
    code = make_code(data)
    typo = code[:position] + symbol + code[position + 1 :]
    if typo == code:
        return
    with pytest.raises(MalformedCode):
        codes.normalise(typo)


@given(data_strings, st.integers(0, codes.LENGTH - 2))
def test_check_symbol_catches_every_adjacent_transposition(data: str, position: int) -> None:
    code = make_code(data)
    swapped = code[:position] + code[position + 1] + code[position] + code[position + 2 :]
    if swapped == code:
        return
    with pytest.raises(MalformedCode):
        codes.normalise(swapped)


def test_check_symbol_catches_all_typos_of_many_codes_exhaustively() -> None:
    for _ in range(30):
        code = codes.generate()
        for position in range(codes.LENGTH):
            for symbol in ALPHABET.replace(code[position], ""):
                with pytest.raises(MalformedCode):
                    codes.normalise(code[:position] + symbol + code[position + 1 :])


def test_code_id_is_a_keyed_hmac_of_the_canonical_code() -> None:
    code = codes.generate()
    code_id = codes.code_id(codes.format_code(code).lower(), KEY)
    assert code_id == hmac.new(KEY, code.encode(), hashlib.sha256).hexdigest()
    assert codes.is_code_id(code_id)
    # Every way of typing the code maps to the same id ...
    assert codes.code_id(code, KEY) == code_id
    # ... another key gives another id, and the id is not a plain hash of the code.
    assert codes.code_id(code, b"x" * 40) != code_id
    assert code_id != hashlib.sha256(code.encode()).hexdigest()
    assert code not in code_id.upper()


def test_code_id_refuses_malformed_codes() -> None:
    with pytest.raises(MalformedCode):
        codes.code_id("not-a-code", KEY)
