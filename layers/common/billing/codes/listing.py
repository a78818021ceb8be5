"""The admin listing of redemption codes, newest first, over a sharded index.

Every code carries `list_shard` (one of SHARDS, from its code_id, which is an HMAC and so
uniform) and `list_sort` = "<created_at>#<code_id>" (unique, and time-ordered because
created_at is a fixed-width ISO string). The `by_shard` index (keys only) then spreads the
writes of a batch over SHARDS partitions instead of one. A page reads the newest `limit + 1`
keys of every shard below the cursor, merges them newest first, keeps `limit` and reads those
codes (consistently, so uses and status are current). The cursor is the last `list_sort`
shown; the next page starts below it in every shard.

SHARDS may grow without moving anything: a code's shard stays below the old count, and
every page reads all shards below the new one.
"""

from __future__ import annotations

import re
from typing import Any

from billing.errors import InvalidRequest
from billing.models import RedemptionCode
from billing.pagination import decode_cursor, encode_cursor

SHARDS = 8
_SORT_KEY = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z#[0-9a-f]{64}$")


def shard_of(code_id: str) -> str:
    return f"codes#{int(code_id[:8], 16) % SHARDS}"


def sort_key(created_at: str, code_id: str) -> str:
    return f"{created_at}#{code_id}"


def _before(cursor: str | None) -> str | None:
    if not cursor:
        return None
    value = decode_cursor(cursor)
    before = value.get("before") if value and set(value) == {"before"} else None
    if not isinstance(before, str) or not _SORT_KEY.match(before):
        raise InvalidRequest("The cursor is invalid.")
    return before


def newest_first(limit: int, cursor: str | None) -> tuple[list[RedemptionCode], str | None]:
    """A page of at most `limit` codes, newest first, and the cursor of the next (or None)."""
    before = _before(cursor)
    keys: list[tuple[str, str]] = []
    for shard in range(SHARDS):
        condition = RedemptionCode.list_sort < before if before else None
        found = RedemptionCode.by_shard.query(
            f"codes#{shard}",
            range_key_condition=condition,
            scan_index_forward=False,
            limit=limit + 1,
        )
        keys += [(code.list_sort, code.code_id) for code in found]
    keys.sort(reverse=True)
    page = keys[:limit]
    stored: dict[str, Any] = {
        code.code_id: code
        for code in RedemptionCode.batch_get([code_id for _, code_id in page], consistent_read=True)
    }
    codes = [stored[code_id] for _, code_id in page if code_id in stored]
    more = len(keys) > limit
    return codes, encode_cursor({"before": page[-1][0]}) if more and page else None
