"""Ledger statements: one user's ledger entries in a date range as CSV.

The one writer of statements: GET /ledger/export (the caller's own) and the admin route the
admin CLI calls (`python -m tools.admin export-ledger --user ...`, any user's). Entries are read
in pages of the ledger's local index (account order, strongly consistent) and written row by
row, oldest first. A text cell that a spreadsheet would run as a formula (it starts with
= + - @, a tab or a carriage return) gets a leading apostrophe; numbers are written as plain
integers, so the `delta` column sums to the balance it moved.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import TextIO

from billing import date_range
from billing.date_range import DayRange
from billing.errors import InvalidRequest
from billing.models import LedgerEntry

COLUMNS = ("created_at", "id", "kind", "balance", "delta", "balance_after", "ref", "grants")
DEFAULT_DAYS = 30
MAX_DAYS = 366
PAGE_SIZE = 100
# A Lambda response holds at most 6 MB (less its headers): a longer statement is refused
# with a clear error instead of a truncated file.
MAX_BYTES = 5 * 1024 * 1024
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def guard(cell: str) -> str:
    """A text cell that no spreadsheet evaluates."""
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell


def statement_range(query: Mapping[str, str]) -> DayRange:
    return date_range.day_range(
        query.get("from"), query.get("to"), default_days=DEFAULT_DAYS, max_days=MAX_DAYS
    )


def entries(user_id: str, span: DayRange) -> Iterator[LedgerEntry]:
    """The user's entries created within the range, oldest first, page by page."""
    yield from LedgerEntry.by_seq.query(
        user_id,
        filter_condition=(LedgerEntry.created_at >= span.first_moment())
        & (LedgerEntry.created_at < span.after_last_moment()),
        scan_index_forward=True,
        consistent_read=True,
        page_size=PAGE_SIZE,
    )


def _grants(entry: LedgerEntry) -> str:
    grants = getattr(entry, "grants", None)  # per-grant deltas, once the ledger has them
    if not grants:
        return ""
    values = grants.as_dict() if hasattr(grants, "as_dict") else dict(grants)
    return json.dumps({str(k): int(v) for k, v in values.items()}, sort_keys=True)


def row(entry: LedgerEntry) -> list[str]:
    return [
        guard(entry.created_at),
        guard(entry.entry_id),
        guard(entry.kind),
        guard(entry.balance),
        str(int(entry.delta)),
        str(int(entry.balance_after)),
        guard(entry.ref or ""),
        _grants(entry),
    ]


def write_csv(out: TextIO, items: Iterable[LedgerEntry], *, max_bytes: int | None = None) -> int:
    """Write the header and one row per entry; the number of rows."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    count = 0
    for entry in items:
        writer.writerow(row(entry))
        count += 1
        if max_bytes is not None and out.tell() > max_bytes:
            raise InvalidRequest("The statement is too long for one file; choose a shorter range.")
    return count


def statement_csv(user_id: str, query: Mapping[str, str]) -> tuple[str, DayRange]:
    span = statement_range(query)
    buffer = io.StringIO()
    write_csv(buffer, entries(user_id, span), max_bytes=MAX_BYTES)
    return buffer.getvalue(), span


def filename(user_id: str, span: DayRange) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in user_id)[:64]
    return f"statement-{safe}-{span.start.isoformat()}-{span.end.isoformat()}.csv"
