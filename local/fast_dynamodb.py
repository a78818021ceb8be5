"""Reads of the embedded DynamoDB in time that grows with what they return, not with the table.

moto 5.2 answers every Query by sorting ALL items of the table (`Table.all_items`) with
DynamoType comparisons (each one re-casts both values) before keeping one partition, and it
writes every item it returns through its generic, shape-driven response serializer (about a
millisecond an item). A Query of one user's ledger then costs seconds once the table holds
100,000 items, so a realistic data set (e.g. a per-account reconciliation) cannot run within
a function's Timeout here, although it does in AWS, where a Query reads one partition.
Six changes, same answers:

- `all_items` sorts by each key's cast value (exactly what DynamoType's `<` compares),
  computed once per item instead of once per comparison;
- inside a Query of the table or of a local index, `all_items` yields only the queried
  partition (moto keeps only the items whose hash key equals it anyway); inside a Query of a
  global index it is left unsorted, because moto sorts the matches by the index's full key,
  and when the index's hash key is a string it yields only the items whose attribute is that
  very string (moto compares each item's cast value, and would drop the others);
- a Scan page after the first starts at its ExclusiveStartKey (moto compares every item
  before it with the key, all over again for each page: quadratic in the table's size);
- the results of Query, Scan, GetItem and BatchGetItem, which moto has already turned into
  DynamoDB JSON, are written with `json.dumps` (anything it cannot write, e.g. raw bytes,
  goes through moto's serializer as before);
- a new item's 400 KB check adds up its attributes once, not once per attribute (moto
  re-adds all attributes so far for each one it sets: quadratic in the attribute count, and
  the bulk of a BatchWriteItem's time). The limit and the error are moto's;
- a TransactWriteItems backs up the items it names, not whole tables (moto deep-copies every
  table a transaction touches, so each transaction costs the size of the ledger: seconds
  once it holds tens of thousands of entries). A cancelled transaction puts those items
  back, exactly as moto's restored tables had them; any other failure does too, which is
  what DynamoDB does (moto would keep the writes before a malformed operation).

Everything else (conditions, filters, paging, limits, projections, errors) is moto's own code.
tests/unit/test_fast_dynamodb.py compares every answer with unpatched moto's.
"""

from __future__ import annotations

import bisect
import json
import threading
from typing import Any

_originals: dict[str, Any] = {}
_scope = threading.local()  # the table and partition of the Query in progress
_transaction = threading.local()  # set while a TransactWriteItems keeps its own backups
_JSON_READS = frozenset({"Query", "Scan", "GetItem", "BatchGetItem"})
_ITEM_LIMIT = 405000  # moto's (DynamoDB's 400 KB, as moto measured it)


def _key(item: Any) -> Any:
    if item.range_key is not None:
        return (item.hash_key.cast_value, item.range_key.cast_value)
    return item.hash_key.cast_value


def _start_after(table: Any, start: Any) -> tuple[Any, str, Any] | None:
    """The scope of a Scan page of the table that starts after `start` (its
    ExclusiveStartKey), or None when moto should walk from the first item as it does."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    if not isinstance(start, dict) or table.hash_key_attr not in start:
        return None
    names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
    if any(not isinstance(start.get(name), dict) for name in names):
        return None
    values = [DynamoType(start[name]).cast_value for name in names]
    return (table, "after", tuple(values) if table.range_key_attr else values[0])


class _Backups:
    """The items a TransactWriteItems names, as they were before it (copies), to put back
    if it fails: what moto's whole-table backups would restore of them (a transaction
    writes only the items it names)."""

    def __init__(self) -> None:
        # (table, hash key, range key, whether the hash key's partition existed, item copy)
        self.saved: list[tuple[Any, Any, Any, bool, Any]] = []

    @classmethod
    def of(cls, backend: Any, transact_items: Any) -> _Backups | None:
        """None when an operation cannot be read here: moto then backs up whole tables."""
        import copy

        from moto.dynamodb.models.dynamo_type import DynamoType

        backups = cls()
        try:
            for operation in transact_items:
                [(kind, op)] = operation.items()
                table = backend.tables.get(op.get("TableName"))
                source = op.get("Item") if kind == "Put" else op.get("Key")
                if table is None or not isinstance(source, dict):
                    continue  # moto cannot write it either (it fails the transaction)
                if table.hash_key_attr not in source or (
                    table.range_key_attr and table.range_key_attr not in source
                ):
                    continue  # a key moto refuses before writing anything
                hash_key = DynamoType(source[table.hash_key_attr])
                if table.range_key_attr:
                    range_key = DynamoType(source[table.range_key_attr])
                    partition = table.items.get(hash_key)
                    item = None if partition is None else partition.get(range_key)
                    existed = partition is not None
                else:
                    range_key, item, existed = None, table.items.get(hash_key), True
                backups.saved.append((table, hash_key, range_key, existed, copy.deepcopy(item)))
        except Exception:  # anything unexpected: moto's own whole-table backups
            return None
        return backups

    def restore(self) -> None:
        for table, hash_key, range_key, existed, item in reversed(self.saved):
            if not table.range_key_attr:
                if item is None:
                    table.items.pop(hash_key, None)
                else:
                    table.items[hash_key] = item
                continue
            partition = table.items.get(hash_key)
            if item is not None:
                if partition is None:
                    partition = table.items[hash_key] = {}
                partition[range_key] = item
            elif partition is not None:
                partition.pop(range_key, None)
                if not partition and not existed:
                    del table.items[hash_key]


class _NoTableCopies:
    """Stands in for the `copy` module inside moto.dynamodb.models while a transaction keeps
    its own backups: the table itself instead of a copy (moto's rollback then puts the very
    table back, and _Backups restores its items)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def deepcopy(self, value: Any, memo: Any = None) -> Any:
        from moto.dynamodb.models.table import Table

        if getattr(_transaction, "active", False) and isinstance(value, Table):
            return value
        return self.inner.deepcopy(value, memo)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _items(table: Any) -> list[Any]:
    if table.range_key_attr:
        return [item for partition in table.items.values() for item in partition.values()]
    return list(table.items.values())


def install() -> None:
    """Patch moto once per process (idempotent)."""
    from moto.dynamodb import models
    from moto.dynamodb.exceptions import ItemSizeTooLarge
    from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict
    from moto.dynamodb.models.table import Table
    from moto.dynamodb.models.utilities import bytesize
    from moto.dynamodb.responses import DynamoResult

    if _originals:
        return
    _originals.update(
        all_items=Table.all_items,
        query=Table.query,
        scan=Table.scan,
        execute_result=DynamoResult.execute_result,
        item_init=Item.__init__,
        transact_write_items=models.DynamoDBBackend.transact_write_items,
        models_copy=models.copy,
    )
    original_query = _originals["query"]
    original_scan = _originals["scan"]
    original_execute = _originals["execute_result"]
    original_transact = _originals["transact_write_items"]

    def all_items(self: Any) -> list[Any]:
        scope = getattr(_scope, "value", None)
        if scope is None or scope[0] is not self:
            return sorted(_items(self), key=_key)
        if scope[1] == "unsorted":
            return _items(self)
        if scope[1] == "index":
            name, wanted = scope[2]
            # Inline: this runs over every item of the table for each index Query.
            return [
                item
                for item in _items(self)
                if (value := item.attrs.get(name)) is not None
                and value.value == wanted
                and value.type == "S"
            ]
        if scope[1] == "after":
            ordered = sorted(_items(self), key=_key)
            return ordered[bisect.bisect_right(ordered, scope[2], key=_key) :]
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
            conditions = kwargs.get("hash_key_conditions") or []
            if len(conditions) == 1 and getattr(conditions[0][1], "type", None) == "S":
                name, value = conditions[0]
                scope = (self, "index", (name, value.value))
            else:
                scope = (self, "unsorted", None)
        previous = getattr(_scope, "value", None)
        _scope.value = scope
        try:
            return original_query(self, hash_key, *args, **kwargs)
        finally:
            _scope.value = previous

    def scan(self: Any, filters: Any, limit: Any, start: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = kwargs["index_name"] if "index_name" in kwargs else (args[1:2] or [None])[0]
        scope = None if index_name else _start_after(self, start)
        previous = getattr(_scope, "value", None)
        _scope.value = scope
        try:
            return original_scan(self, filters, limit, start, *args, **kwargs)
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

    def item_init(self: Any, hash_key: Any, range_key: Any, attrs: dict[str, Any]) -> None:
        self.hash_key = hash_key
        self.range_key = range_key
        values = {key: DynamoType(value) for key, value in attrs.items()}
        # What LimitedSizeDict.__setitem__ checks as the last attribute is set (the largest
        # of its running totals, since sizes are never negative).
        if sum(bytesize(key) + value.size() for key, value in values.items()) > _ITEM_LIMIT:
            raise ItemSizeTooLarge
        self.attrs = LimitedSizeDict()
        dict.update(self.attrs, values)

    def transact_write_items(self: Any, transact_items: Any) -> None:
        backups = _Backups.of(self, transact_items)
        if backups is None:
            return original_transact(self, transact_items)
        _transaction.active = True
        try:
            original_transact(self, transact_items)
        except BaseException:
            backups.restore()
            raise
        finally:
            _transaction.active = False
        return None

    models.copy = _NoTableCopies(_originals["models_copy"])  # type: ignore[assignment]
    models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    Table.all_items = all_items  # type: ignore[method-assign]
    Table.query = query  # type: ignore[method-assign]
    Table.scan = scan  # type: ignore[method-assign,assignment]
    DynamoResult.execute_result = execute_result  # type: ignore[method-assign]
    Item.__init__ = item_init  # type: ignore[method-assign]


def uninstall() -> None:
    """moto's own code again (for the equivalence test)."""
    from moto.dynamodb import models
    from moto.dynamodb.models.dynamo_type import Item
    from moto.dynamodb.models.table import Table
    from moto.dynamodb.responses import DynamoResult

    if _originals:
        models.copy = _originals.pop("models_copy")
        models.DynamoDBBackend.transact_write_items = _originals.pop("transact_write_items")  # type: ignore[method-assign]
        Item.__init__ = _originals.pop("item_init")  # type: ignore[method-assign]
        Table.all_items = _originals.pop("all_items")  # type: ignore[method-assign]
        Table.query = _originals.pop("query")  # type: ignore[method-assign]
        Table.scan = _originals.pop("scan")  # type: ignore[method-assign]
        DynamoResult.execute_result = _originals.pop("execute_result")  # type: ignore[method-assign]
