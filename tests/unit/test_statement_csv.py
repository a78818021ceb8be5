"""billing.ops.statement's CSV cells: the formula-injection guard on every text cell and plain
numbers that stay numbers (no I/O: LedgerEntry objects are only built, never saved)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from billing.models import LedgerEntry
from billing.ops import statement

DANGEROUS = ("=", "+", "-", "@", "\t", "\r")


def entry(**fields: Any) -> LedgerEntry:
    values: dict[str, Any] = {
        "user_id": "u-1",
        "entry_id": "usage#req-1",
        "seq": "000000000000007.000",
        "kind": "usage",
        "balance": "quota",
        "delta": -100,
        "balance_after": 900,
        "ref": "",
        "created_at": "2026-11-02T10:00:00.000000Z",
        **fields,
    }
    return LedgerEntry(**values)


def parsed(*entries: LedgerEntry) -> list[dict[str, str]]:
    out = io.StringIO()
    assert statement.write_csv(out, entries) == len(entries)
    return list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))


@pytest.mark.parametrize("start", DANGEROUS)
def test_a_text_cell_starting_like_a_formula_gets_an_apostrophe(start: str) -> None:
    cell = start + 'HYPERLINK("http://evil.example")'
    assert statement.guard(cell) == "'" + cell


@pytest.mark.parametrize("start", DANGEROUS)
def test_every_text_column_is_guarded_and_survives_the_csv_round_trip(start: str) -> None:
    text = start + "1+1"
    (row,) = parsed(entry(ref=text, kind=text, entry_id=f"{text}#id", balance=text))
    for column in ("ref", "kind", "id", "balance"):
        assert row[column].startswith("'"), (column, row[column])
        assert row[column][1:] == (f"{text}#id" if column == "id" else text)


@pytest.mark.parametrize("cell", ["", "usage", "order 42", "'quoted", "a=b", "x-1", " =1"])
def test_safe_text_is_left_as_it_is(cell: str) -> None:
    assert statement.guard(cell) == cell


def test_a_negative_delta_stays_a_number_that_sums() -> None:
    rows = parsed(
        entry(entry_id="adjustment#1", kind="adjustment", delta=1000, balance_after=1000),
        entry(entry_id="usage#1", delta=-100, balance_after=900),
        entry(entry_id="usage#2", delta=-1, balance_after=899),
    )
    assert [row["delta"] for row in rows] == ["1000", "-100", "-1"]
    assert [row["balance_after"] for row in rows] == ["1000", "900", "899"]
    assert sum(int(row["delta"]) for row in rows) == 899
    overdrawn = parsed(entry(delta=-5000, balance_after=-4100))[0]
    assert (overdrawn["delta"], overdrawn["balance_after"]) == ("-5000", "-4100")


def test_the_grants_column_is_json_that_sums_to_the_delta() -> None:
    (row,) = parsed(entry(delta=-150, grants={"gpromo": -100, "gpaid": -50}))
    assert row["grants"].startswith("{")  # never a formula, never guarded
    assert json.loads(row["grants"]) == {"gpaid": -50, "gpromo": -100}
    assert sum(json.loads(row["grants"]).values()) == int(row["delta"])
    (plain,) = parsed(entry(kind="adjustment", balance="aff_quota", delta=7))
    assert plain["grants"] == ""
