"""Ledger statements: one user's ledger entries in a date range as CSV.

The one writer of statements: GET /ledger/export (the caller's own) and the admin route the
admin CLI calls (`python -m tools.admin export-ledger --user ...`, any user's). Entries are read
in pages of the ledger's local index (account order, strongly consistent) and written row by
row, oldest first.

Only the range is read. The ledger's sort keys are not times (entry_id names the entry; the
`by_seq` index orders by account version), but versions and times grow together: the ledger
stamps an entry after reading the version it commits on top of, so a later version never has
an earlier created_at (up to clock skew between writers, covered by SKEW_MARGIN). So a binary
search over versions (one-item queries) finds the first version of the range, the export
queries `seq >= that version` and stops at the first entry past the range.

A text cell that a spreadsheet would run as a formula (it starts with = + - @, a tab or a
carriage return) gets a leading apostrophe. `delta` and `balance_after` are integers written
as plain numbers and never guarded (a -100 stays a number, so the column sums to the balance it
moved); `grants` is a JSON object, which starts with "{".
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import TextIO

from billing import clock, date_range
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
# How far apart two writers' clocks may be (Lambda hosts are NTP-synchronised to within
# milliseconds): the export reads this much beyond each end of the range and filters.
SKEW_MARGIN_SECONDS = 300


def guard(cell: str) -> str:
    """A text cell that no spreadsheet evaluates."""
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell


def statement_range(query: Mapping[str, str]) -> DayRange:
    return date_range.day_range(
        query.get("from"), query.get("to"), default_days=DEFAULT_DAYS, max_days=MAX_DAYS
    )


def _first_at_or_after(user_id: str, version: int) -> LedgerEntry | None:
    found = LedgerEntry.by_seq.query(
        user_id,
        LedgerEntry.seq >= _version_key(version),
        scan_index_forward=True,
        consistent_read=True,
        limit=1,
    )
    return next(iter(found), None)


def _last(user_id: str) -> LedgerEntry | None:
    found = LedgerEntry.by_seq.query(
        user_id, scan_index_forward=False, consistent_read=True, limit=1
    )
    return next(iter(found), None)


def _shifted(moment: str, seconds: int) -> str:
    return clock.iso(clock.parse_iso(moment) + timedelta(seconds=seconds))


def _version_key(version: int) -> str:
    return f"{version:015d}"  # the version part of a seq ("<version>.<index>", billing.ledger)


def first_version(user_id: str, since: str) -> int | None:
    """The lowest account version from which every entry was created at or after `since`
    (ISO, minus SKEW_MARGIN by the caller), by binary search; None when no entry is."""
    last = _last(user_id)
    if last is None or last.created_at < since:
        return None
    low, high = 0, int(last.seq.split(".")[0])
    while low < high:
        middle = (low + high) // 2
        entry = _first_at_or_after(user_id, middle)
        if entry is not None and entry.created_at >= since:
            high = middle
        else:
            low = middle + 1
    return low


def entries(user_id: str, span: DayRange) -> Iterator[LedgerEntry]:
    """The user's entries created within the range, oldest first, page by page: a key
    condition from the range's first version, read until the first entry past its end."""
    first, after = span.first_moment(), span.after_last_moment()
    start = first_version(user_id, _shifted(first, -SKEW_MARGIN_SECONDS))
    if start is None:
        return
    stop = _shifted(after, SKEW_MARGIN_SECONDS)
    for entry in LedgerEntry.by_seq.query(
        user_id,
        LedgerEntry.seq >= _version_key(start),
        scan_index_forward=True,
        consistent_read=True,
        page_size=PAGE_SIZE,
    ):
        if entry.created_at >= stop:
            return
        if first <= entry.created_at < after:
            yield entry


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
