"""Reads of the embedded DynamoDB in time that grows with what they return, not with the table.

moto 5.2 answers every Query by sorting ALL items of the table (`Table.all_items`) with
DynamoType comparisons (each one re-casts both values) before keeping one partition, and it
writes every item it returns through its generic, shape-driven response serializer (about a
millisecond an item). A Query of one user's ledger then costs seconds once the table holds
100,000 items, so a realistic data set (e.g. a per-account reconciliation) cannot run within
a function's Timeout here, although it does in AWS, where a Query reads one partition.
Three changes, same answers:

- `all_items` sorts by each key's cast value (exactly what DynamoType's `<` compares),
  computed once per item instead of once per comparison;
- inside a Query of the table or of a local index, `all_items` yields only the queried
  partition (moto keeps only the items whose hash key equals it anyway); inside a Query of a
  global index it is left unsorted, because moto sorts the matches by the index's full key;
- the results of Query, Scan, GetItem and BatchGetItem, which moto has already turned into
  DynamoDB JSON, are written with `json.dumps` (anything it cannot write, e.g. raw bytes,
  goes through moto's serializer as before).

Everything else (conditions, filters, paging, limits, projections, errors) is moto's own code.
tests/unit/test_fast_dynamodb.py compares every answer with unpatched moto's.
"""

from __future__ import annotations

import json
import threading
from typing import Any

_originals: dict[str, Any] = {}
_scope = threading.local()  # the table and partition of the Query in progress
_JSON_READS = frozenset({"Query", "Scan", "GetItem", "BatchGetItem"})


def _key(item: Any) -> Any:
    if item.range_key is not None:
        return (item.hash_key.cast_value, item.range_key.cast_value)
    return item.hash_key.cast_value


def _items(table: Any) -> list[Any]:
    if table.range_key_attr:
        return [item for partition in table.items.values() for item in partition.values()]
    return list(table.items.values())


def install() -> None:
    """Patch moto once per process (idempotent)."""
    from moto.dynamodb.models.table import Table
    from moto.dynamodb.responses import DynamoResult

    if _originals:
        return
    _originals.update(
        all_items=Table.all_items,
        query=Table.query,
        execute_result=DynamoResult.execute_result,
    )
    original_query = _originals["query"]
    original_execute = _originals["execute_result"]

    def all_items(self: Any) -> list[Any]:
        scope = getattr(_scope, "value", None)
        if scope is None or scope[0] is not self:
            return sorted(_items(self), key=_key)
        if scope[1] == "unsorted":
            return _items(self)
        found = self.items.get(scope[2])
        if found is None:
            return []
        return sorted(found.values() if self.range_key_attr else [found], key=_key)

    def query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = kwargs["index_name"] if "index_name" in kwargs else (args[6:7] or [None])[0]
        local_indexes = {index.name for index in (self.indexes or [])}
        scope: tuple[Any, str, Any] | None
        if hash_key is None:
            scope = None
        elif index_name is None or index_name in local_indexes:
            scope = (self, "partition", hash_key)
        else:
            scope = (self, "unsorted", None)
        previous = getattr(_scope, "value", None)
        _scope.value = scope
        try:
            return original_query(self, hash_key, *args, **kwargs)
        finally:
            _scope.value = previous

    def execute_result(self: Any, context: Any) -> Any:
        if context.operation_model.name in _JSON_READS and isinstance(self.result, dict):
            try:
                body = json.dumps(self.result)
            except (TypeError, ValueError):
                return original_execute(self, context)
            return 200, {"Content-Type": "application/x-amz-json-1.0"}, body
        return original_execute(self, context)

    Table.all_items = all_items  # type: ignore[method-assign]
    Table.query = query  # type: ignore[method-assign]
    DynamoResult.execute_result = execute_result  # type: ignore[method-assign]


def uninstall() -> None:
    """moto's own code again (for the equivalence test)."""
    from moto.dynamodb.models.table import Table
    from moto.dynamodb.responses import DynamoResult

    if _originals:
        Table.all_items = _originals.pop("all_items")  # type: ignore[method-assign]
        Table.query = _originals.pop("query")  # type: ignore[method-assign]
        DynamoResult.execute_result = _originals.pop("execute_result")  # type: ignore[method-assign]
