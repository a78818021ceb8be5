"""Recent writes of every item, so that reads which do not ask for consistency lag as in AWS.

DynamoDB answers GSI queries, and reads without ConsistentRead, from replicas that may not
have seen a write yet (GSIs are fed asynchronously; LSIs and tables can be read strongly).
moto applies every write at once, so this module keeps, per item, the image it had before
each write of the last ``lag`` seconds. An eventually consistent read then sees each such
item as it was before its oldest recent write: changed items read old, new items are absent,
deleted items are still there. Deterministic worst case: every read inside the lag is stale.

The views are applied to moto's own tables for the length of one read (under the embedded
AWS's lock), so moto evaluates key conditions, filters, projections and pagination on the
stale data itself. Nothing here sleeps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# (hash key, range key or None), as moto's DynamoType values (hashable, as moto indexes them)
ItemKey = tuple[Any, Any]


@dataclass
class _Pending:
    at: float
    before: Any  # moto Item (a private copy) or None: the item did not exist


@dataclass
class RecentWrites:
    """The images items had before their writes of the last ``lag`` seconds."""

    lag: float
    _by_table: dict[str, dict[ItemKey, deque[_Pending]]] = field(default_factory=dict)
    _order: deque[tuple[float, str, ItemKey]] = field(default_factory=deque)

    @property
    def enabled(self) -> bool:
        return self.lag > 0

    def record(self, table: str, key: ItemKey, before: Any, now: float) -> None:
        if not self.enabled:
            return
        self._prune(now)
        pending = self._by_table.setdefault(table, {}).setdefault(key, deque())
        pending.append(_Pending(now, before))
        self._order.append((now, table, key))

    def stale(self, table: str, now: float) -> dict[ItemKey, Any]:
        """Items of the table that an eventually consistent read must see as older: key ->
        the image to show (None: the item must not be seen)."""
        self._prune(now)
        return {key: pending[0].before for key, pending in self._by_table.get(table, {}).items()}

    def _prune(self, now: float) -> None:
        horizon = now - self.lag
        while self._order and self._order[0][0] <= horizon:
            _, table, key = self._order.popleft()
            items = self._by_table.get(table)
            if items is None or key not in items:
                continue
            pending = items[key]
            pending.popleft()
            if not pending:
                del items[key]
                if not items:
                    del self._by_table[table]


# ---------------------------------------------------------------- moto's table storage


def stored(table: Any, key: ItemKey) -> Any:
    """The moto Item stored under key, or None (without creating anything)."""
    hash_key, range_key = key
    if table.range_key_attr is None:
        return table.items.get(hash_key)
    bucket = table.items.get(hash_key)
    return None if bucket is None else bucket.get(range_key)


def _place(table: Any, key: ItemKey, item: Any) -> None:
    hash_key, range_key = key
    if table.range_key_attr is None:
        if item is None:
            table.items.pop(hash_key, None)
        else:
            table.items[hash_key] = item
        return
    if item is None:
        bucket = table.items.get(hash_key)
        if bucket is not None:
            bucket.pop(range_key, None)
            if not bucket:
                del table.items[hash_key]
    else:
        table.items[hash_key][range_key] = item


@contextmanager
def shown_as(table: Any, images: dict[ItemKey, Any]) -> Iterator[None]:
    """Show these images in place of the stored items for the length of one read; the
    stored items (the very same objects) are put back afterwards, whatever happens."""
    saved = [(key, stored(table, key)) for key in images]
    try:
        for key, image in images.items():
            _place(table, key, image)
        yield
    finally:
        for key, item in saved:
            _place(table, key, item)
