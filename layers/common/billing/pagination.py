"""Opaque cursors over DynamoDB's LastEvaluatedKey: newest-first pages of `{items, next_cursor}`.

A cursor handed to a client is sealed: the key's cursor and an HMAC-SHA256 (under the cursor
key from Secrets Manager) of it with the list's name and the caller. So the server honours only
cursors it issued for that list and that caller; anything else (forged, truncated, another
user's or another list's) is 400 invalid_request before any query runs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any, TypeVar

from pynamodb.pagination import ResultIterator

from billing.errors import InvalidRequest
from billing.secrets import cursor_key

T = TypeVar("T")

_SEAL_FORMAT = "cursor/v1"  # in the signed message, so a format change invalidates old seals


def seal_cursor(list_name: str, caller: str, cursor: str | None) -> str | None:
    """The cursor as a client sees it: `<cursor>.<mac>`, valid only for this list and caller."""
    if cursor is None:
        return None
    return f"{cursor}.{_mac(list_name, caller, cursor)}"


def open_cursor(list_name: str, caller: str, sealed: str | None) -> str | None:
    """The cursor inside a sealed one; InvalidRequest unless this server sealed it for this list
    and this caller (compared in constant time)."""
    if not sealed:
        return None
    cursor, _, mac = sealed.rpartition(".")
    expected = _mac(list_name, caller, cursor)
    if not cursor or not hmac.compare_digest(mac.encode(), expected.encode()):
        raise InvalidRequest("The cursor is invalid.")
    return cursor


def _mac(list_name: str, caller: str, cursor: str) -> str:
    message = json.dumps([_SEAL_FORMAT, list_name, caller, cursor], separators=(",", ":"))
    digest = hmac.new(cursor_key(), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def encode_cursor(last_key: dict[str, Any] | None) -> str | None:
    if not last_key:
        return None
    raw = json.dumps(last_key, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, owner: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The key a cursor encodes; `owner` pins key attributes (a user's cursor cannot page
    through another user's partition)."""
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("The cursor is invalid.") from exc
    if not isinstance(value, dict):
        raise InvalidRequest("The cursor is invalid.")
    for name, expected in (owner or {}).items():
        if value.get(name) != {"S": expected}:
            raise InvalidRequest("The cursor is invalid.")
    return value


def collect_page(
    results: ResultIterator[T],
    limit: int,
    render: Callable[[T], dict[str, Any]],
    refresh: Callable[[list[T]], list[T]] | None = None,
) -> dict[str, Any]:
    """Render up to `limit` results and the cursor of the next page (None at the end);
    `refresh` replaces the page's items (read again) before they are rendered."""
    found = list(results)
    next_key = results.last_evaluated_key if len(found) >= limit else None
    page = found[:limit]
    if refresh is not None and page:
        page = refresh(page)
    return {"items": [render(item) for item in page], "next_cursor": encode_cursor(next_key)}


def newest_first(
    query: Callable[..., ResultIterator[T]],
    key_name: str,
    key: str,
    limit: int,
    cursor: str | None,
    render: Callable[[T], dict[str, Any]],
    *,
    consistent_read: bool = False,
    refresh: Callable[[list[T]], list[T]] | None = None,
) -> dict[str, Any]:
    """A page of one partition (`key_name` = `key`) of a table or index, newest first; the
    cursor must belong to that partition. `consistent_read` only for a table or a local index
    (DynamoDB never reads a global index strongly: `refresh` reads the page's items again)."""
    results = query(
        key,
        scan_index_forward=False,
        limit=limit,
        last_evaluated_key=decode_cursor(cursor, owner={key_name: key}),
        consistent_read=consistent_read,
    )
    return collect_page(results, limit, render, refresh)
