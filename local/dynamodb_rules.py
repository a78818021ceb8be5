"""DynamoDB as strict as AWS, in front of moto: lagging reads, throttled partitions and
transaction conflicts.

- Reads that do not ask for consistency (GetItem, BatchGetItem, Query and Scan without
  ConsistentRead, every GSI read) see the items written in the last LOCAL_INDEX_LAG_MS as
  they were before (local/dynamodb_history.py). ConsistentRead on a GSI is moto's own
  ValidationException, as in AWS; tables and LSIs read strongly when asked.
- Each partition key of a table or GSI has token buckets (local/dynamodb_capacity.py);
  an empty one answers like AWS: ThrottlingException on on-demand tables (AWS's "Rate of
  requests exceeds the allowed throughput" for data plane calls of on-demand tables),
  ProvisionedThroughputExceededException on provisioned ones, both with ThrottlingReasons;
  batch calls hand back UnprocessedItems / UnprocessedKeys and fail only when nothing could
  be processed; a transaction is cancelled with ThrottlingError for the throttled items.
- A TransactWriteItems holds its items for LOCAL_TRANSACTION_MS before it commits (a real
  one takes a few milliseconds): a PutItem, UpdateItem or DeleteItem of one of those items
  meanwhile fails with TransactionConflictException, which botocore does not retry, and a
  TransactWriteItems or TransactGetItems touching one is cancelled with TransactionConflict.
  GetItem is not affected (AWS lets both succeed).

The stack's own calls (provisioning) are exempt. Requests that cannot be analysed (unknown
table, malformed keys) go to moto untouched, which answers them as AWS would.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from local.dynamodb_capacity import (
    BucketKey,
    Partitions,
    item_size,
    read_units,
    write_units,
)
from local.dynamodb_history import ItemKey, RecentWrites, shown_as, stored
from local.dynamodb_streams import DynamoStreams
from local.strictness import Strictness

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

log = logging.getLogger("local.dynamodb")

Answer = tuple[str, list[tuple[str, str]], bytes]  # status line, headers, body
Forward = Callable[["WSGIEnvironment", bytes], Answer]

NAMESPACE = "com.amazonaws.dynamodb.v20120810#"
HOT_KEY_HELP = (
    "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-partition-key-design.html"
)
ON_DEMAND_TABLE_MESSAGE = (
    "Throughput exceeds the current capacity of your table or index. DynamoDB is "
    "automatically scaling your table or index so please try again shortly. If exceptions "
    f"persist, check if you have a hot key: {HOT_KEY_HELP}"
)
ON_DEMAND_INDEX_MESSAGE = (
    "Throughput exceeds the current capacity for one or more global secondary indexes. "
    "DynamoDB is automatically scaling your index so please try again shortly."
)
PROVISIONED_MESSAGE = (
    "The level of configured provisioned throughput for the table was exceeded. Consider "
    "increasing your provisioning level with the UpdateTable API."
)
CONFLICT_MESSAGE = "Transaction is ongoing for the item"

_HANDLED = {
    "GetItem",
    "BatchGetItem",
    "Query",
    "Scan",
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "BatchWriteItem",
    "TransactWriteItems",
    "TransactGetItems",
}
_EQUALITY = re.compile(r"([#\w.]+)\s*=\s*(:[\w]+)|(:[\w]+)\s*=\s*([#\w.]+)")

# (table name, item key)
TableItem = tuple[str, ItemKey]


class _Unanalysable(Exception):
    """The request is not one this module can reason about: moto answers it as it is."""


def _json_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _dynamo_type(value: dict[str, Any]) -> Any:
    from moto.dynamodb.models.dynamo_type import DynamoType

    return DynamoType(value)


class DynamoRules:
    """Stands between the embedded AWS's wrapper and moto for DynamoDB's item operations."""

    def __init__(
        self,
        strictness: Strictness,
        forward: Forward,
        lock: threading.Lock,
        streams: DynamoStreams | None = None,
    ) -> None:
        self.strictness = strictness
        self.streams = streams  # every committed change of a stream-enabled table goes there
        self.forward = forward  # moto itself, without the lock
        self.lock = lock  # the embedded AWS's lock (moto's backends are not thread-safe)
        self.history = RecentWrites(strictness.index_lag_ms / 1000)
        self.partitions = Partitions(
            strictness.partition_read_units, strictness.partition_write_units
        )
        self._in_flight: Counter[TableItem] = Counter()
        self._in_flight_lock = threading.Lock()
        self.throttled: Counter[str] = Counter()  # for /_local/stats
        self.conflicts: Counter[str] = Counter()

    # ------------------------------------------------------------ entry point

    def handles(self, operation: str) -> bool:
        return operation in _HANDLED

    def __call__(
        self,
        operation: str,
        environ: WSGIEnvironment,
        body: bytes,
        internal: bool,
    ) -> Answer:
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise _Unanalysable
            handler = getattr(self, "_" + _snake(operation))
            answer: Answer = handler(request, environ, body, internal)
            return answer
        except _Unanalysable:
            with self.lock:
                return self.forward(environ, body)

    def stats(self) -> dict[str, Any]:
        with self._in_flight_lock:
            in_flight = len(self._in_flight)
        return {
            "throttled": dict(sorted(self.throttled.items())),
            "transaction_conflicts": dict(sorted(self.conflicts.items())),
            "items_in_transactions": in_flight,
        }

    # ------------------------------------------------------------ moto's view

    def _backend(self, environ: WSGIEnvironment) -> Any:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends

        return dynamodb_backends[DEFAULT_ACCOUNT_ID][_region(environ)]

    def _table(self, environ: WSGIEnvironment, name: Any) -> Any:
        if not isinstance(name, str):
            raise _Unanalysable
        tables = self._backend(environ).tables
        table = tables.get(name)
        if table is None and name.startswith("arn:"):  # DynamoDB takes a table's ARN too
            table = next((t for t in list(tables.values()) if t.table_arn == name), None)
        if table is None:
            raise _Unanalysable
        return table

    @staticmethod
    def _key(table: Any, attributes: Any) -> ItemKey:
        if not isinstance(attributes, dict) or table.hash_key_attr not in attributes:
            raise _Unanalysable
        hash_key = _dynamo_type(attributes[table.hash_key_attr])
        range_key = None
        if table.range_key_attr is not None:
            if table.range_key_attr not in attributes:
                raise _Unanalysable
            range_key = _dynamo_type(attributes[table.range_key_attr])
        return (hash_key, range_key)

    @property
    def _throttling(self) -> bool:
        return self.strictness.throttle

    # ------------------------------------------------------------ reads

    def _get_item(
        self, request: dict[str, Any], environ: WSGIEnvironment, body: bytes, internal: bool
    ) -> Answer:
        table = self._table(environ, request.get("TableName"))
        key = self._key(table, request.get("Key"))
        consistent = request.get("ConsistentRead") is True
        bucket = (table.name, "read", _json_key(key[0].to_json()))
        with self.lock:
            now = time.monotonic()
            throttle = self._throttling and not internal
            if throttle and self.partitions.exhausted([bucket], now):
                return self._throttled(table, "Read", bucket)
            images = {} if consistent else self._stale_images(table, now, [key])
            with shown_as(table, images):
                answer = self.forward(environ, body)
            visible = images[key] if key in images else stored(table, key)
            if self._throttling and not internal:
                size = visible.size() if visible is not None else 0
                self.partitions.consume({bucket: read_units(size, consistent)}, now)
        return answer

    def _query(
        self, request: dict[str, Any], environ: WSGIEnvironment, body: bytes, internal: bool
    ) -> Answer:
        return self._read_many(request, environ, body, internal, query=True)

    def _scan(
        self, request: dict[str, Any], environ: WSGIEnvironment, body: bytes, internal: bool
    ) -> Answer:
        return self._read_many(request, environ, body, internal, query=False)

    def _read_many(
        self,
        request: dict[str, Any],
        environ: WSGIEnvironment,
        body: bytes,
        internal: bool,
        *,
        query: bool,
    ) -> Answer:
        table = self._table(environ, request.get("TableName"))
        index_name = request.get("IndexName")
        gsi = _index(table.global_indexes, index_name)
        lsi = _index(table.indexes, index_name)
        if index_name is not None and gsi is None and lsi is None:
            raise _Unanalysable  # moto reports the unknown index
        consistent = request.get("ConsistentRead") is True and gsi is None
        resource = table.name if gsi is None else f"{table.name}/index/{gsi.name}"
        hash_attribute = _hash_attribute(gsi.schema) if gsi is not None else table.hash_key_attr
        partition = _query_partition(request, hash_attribute) if query else None
        bucket = (resource, "read", partition) if partition is not None else None
        with self.lock:
            now = time.monotonic()
            throttle = self._throttling and not internal and bucket is not None
            if throttle and bucket is not None and self.partitions.exhausted([bucket], now):
                return self._throttled(table, "Read", bucket, index=gsi is not None)
            images = {} if consistent else self._stale_images(table, now)
            with shown_as(table, images):
                answer = self.forward(environ, body)
            if self._throttling and not internal and answer[0].startswith("200"):
                usage = _read_usage(answer[2], resource, hash_attribute, bucket, consistent)
                self.partitions.consume(usage, now)
        return answer

    def _batch_get_item(
        self, request: dict[str, Any], environ: WSGIEnvironment, body: bytes, internal: bool
    ) -> Answer:
        wanted = request.get("RequestItems")
        if not isinstance(wanted, dict) or not wanted:
            raise _Unanalysable
        tables = {name: self._table(environ, name) for name in wanted}
        keys: dict[str, list[tuple[dict[str, Any], ItemKey]]] = {}
        for name, spec in wanted.items():
            if not isinstance(spec, dict) or not isinstance(spec.get("Keys"), list):
                raise _Unanalysable
            keys[name] = [(raw, self._key(tables[name], raw)) for raw in spec["Keys"]]
        with self.lock:
            now = time.monotonic()
            kept: dict[str, list[tuple[dict[str, Any], ItemKey]]] = {}
            left: dict[str, list[dict[str, Any]]] = {}
            budget = _Budget(self.partitions, now)
            for name, entries in keys.items():
                consistent = wanted[name].get("ConsistentRead") is True
                for raw, key in entries:
                    bucket = (name, "read", _json_key(key[0].to_json()))
                    item = stored(tables[name], key)
                    units = read_units(item.size() if item is not None else 0, consistent)
                    if self._throttling and not internal and not budget.take({bucket: units}):
                        left.setdefault(name, []).append(raw)
                    else:
                        kept.setdefault(name, []).append((raw, key))
            if left and not kept:
                name = next(iter(left))
                _, first_key = keys[name][0]
                bucket = (name, "read", _json_key(first_key[0].to_json()))
                return self._throttled(tables[name], "Read", bucket)
            forwarded = body
            if left:
                reduced = {
                    name: {**wanted[name], "Keys": [raw for raw, _ in entries]}
                    for name, entries in kept.items()
                }
                forwarded = json.dumps({**request, "RequestItems": reduced}).encode()
            images: dict[str, dict[ItemKey, Any]] = {}
            for name, entries in kept.items():
                if wanted[name].get("ConsistentRead") is not True:
                    images[name] = self._stale_images(
                        tables[name], now, [key for _, key in entries]
                    )
            with ExitStack() as shown:
                for name, table_images in images.items():
                    shown.enter_context(shown_as(tables[name], table_images))
                answer = self.forward(environ, forwarded)
            if self._throttling and not internal:
                usage: dict[BucketKey, float] = {}
                for name, entries in kept.items():
                    consistent = wanted[name].get("ConsistentRead") is True
                    for _, key in entries:
                        table_images = images.get(name, {})
                        visible = (
                            table_images[key] if key in table_images else stored(tables[name], key)
                        )
                        size = visible.size() if visible is not None else 0
                        bucket = (name, "read", _json_key(key[0].to_json()))
                        usage[bucket] = usage.get(bucket, 0) + read_units(size, consistent)
                self.partitions.consume(usage, now)
        if left:
            for name in left:
                self.throttled[f"{name}.BatchGetItem"] += len(left[name])
            unprocessed = {
                name: {**{k: v for k, v in wanted[name].items() if k != "Keys"}, "Keys": raws}
                for name, raws in left.items()
            }
            answer = _merge_unprocessed(answer, "UnprocessedKeys", unprocessed)
        return answer

    def _transact_get_items(
        self, request: dict[str, Any], environ: WSGIEnvironment, body: bytes, internal: bool
    ) -> Answer:
        entries = request.get("TransactItems")
        if not isinstance(entries, list) or not entries:
            raise _Unanalysable
        targets: list[tuple[Any, ItemKey]] = []
        for entry in entries:
            get = entry.get("Get") if isinstance(entry, dict) else None
            if not isinstance(get, dict):
                raise _Unanalysable
            table = self._table(environ, get.get("TableName"))
            targets.append((table, self._key(table, get.get("Key"))))
        if not internal:
            with self._in_flight_lock:
                busy = [(table.name, key) in self._in_flight for table, key in targets]
            if any(busy):
                self.conflicts["TransactGetItems"] += 1
                return _cancelled(["TransactionConflict" if b else None for b in busy])
        buckets = [(table.name, "read", _json_key(key[0].to_json())) for table, key in targets]
        with self.lock:
            now = time.monotonic()
            if self._throttling and not internal:
                empty = self.partitions.exhausted(buckets, now)
                if empty:
                    self.throttled["TransactGetItems"] += 1
                    return _cancelled(
                        [
                            _throttle_code(t) if b in empty else None
                            for (t, _), b in zip(targets, buckets, strict=True)
                        ],
                        index=False,
                    )
            answer = self.forward(environ, body)
            if self._throttling and not internal:
                usage: dict[BucketKey, float] = {}
                for (table, key), bucket in zip(targets, buckets, strict=True):
                    item = stored(table, key)
                    size = item.size() if item is not None else 0
                    usage[bucket] = usage.get(bucket, 0) + read_units(size, True, True)
                self.partitions.consume(usage, now)
        return answer

    def _stale_images(
        self, table: Any, now: float, only: list[ItemKey] | None = None
    ) -> dict[ItemKey, Any]:
        images = self.history.stale(table.name, now)
        if only is not None:
            return {key: images[key] for key in only if key in images}
        return images

    # ------------------------------------------------------------ writes

    def _put_item(
        self, request: dict[str, Any], environ: WSGIEnvironment, body: bytes, internal: bool
    ) -> Answer:
        table = self._table(environ, request.get("TableName"))
        return self._write_one(
            "PutItem",
            table,
            self._key(table, request.get("Item")),
            request.get("Item"),
            environ,
            body,
            internal,
        )

    def _update_item(
        self, request: dict[str, Any], environ: WSGIEnvironment, body: bytes, internal: bool
    ) -> Answer:
        table = self._table(environ, request.get("TableName"))
        key = self._key(table, request.get("Key"))
        return self._write_one("UpdateItem", table, key, None, environ, body, internal)

    def _delete_item(
        self, request: dict[str, Any], environ: WSGIEnvironment, body: bytes, internal: bool
    ) -> Answer:
        table = self._table(environ, request.get("TableName"))
        key = self._key(table, request.get("Key"))
        return self._write_one("DeleteItem", table, key, None, environ, body, internal)

    def _write_one(
        self,
        operation: str,
        table: Any,
        key: ItemKey,
        new_item: dict[str, Any] | None,
        environ: WSGIEnvironment,
        body: bytes,
        internal: bool,
    ) -> Answer:
        if not internal and self._is_in_flight((table.name, key)):
            self.conflicts[operation] += 1
            return _error("TransactionConflictException", CONFLICT_MESSAGE)
        with self.lock:
            now = time.monotonic()
            before = stored(table, key)
            if self._throttling and not internal:
                buckets = _write_buckets(table, key, before, new_item)
                empty = self.partitions.exhausted(buckets, now)
                if empty:
                    self.throttled[f"{table.name}.{operation}"] += 1
                    bucket = min(empty)
                    return self._throttled(table, "Write", bucket, index="/index/" in bucket[0])
            answer, usage = self._apply(environ, body, [(table.name, key)], now, False)
            if self._throttling and not internal:
                self.partitions.consume(usage, now)
        return answer

    def _batch_write_item(
        self, request: dict[str, Any], environ: WSGIEnvironment, body: bytes, internal: bool
    ) -> Answer:
        wanted = request.get("RequestItems")
        if not isinstance(wanted, dict) or not wanted:
            raise _Unanalysable
        writes: list[tuple[str, dict[str, Any], ItemKey, dict[str, Any] | None]] = []
        tables: dict[str, Any] = {}
        for name, requests in wanted.items():
            tables[name] = table = self._table(environ, name)
            if not isinstance(requests, list):
                raise _Unanalysable
            for entry in requests:
                put = entry.get("PutRequest") if isinstance(entry, dict) else None
                delete = entry.get("DeleteRequest") if isinstance(entry, dict) else None
                if isinstance(put, dict):
                    writes.append((name, entry, self._key(table, put.get("Item")), put["Item"]))
                elif isinstance(delete, dict):
                    writes.append((name, entry, self._key(table, delete.get("Key")), None))
                else:
                    raise _Unanalysable
        with self.lock:
            now = time.monotonic()
            kept: list[tuple[str, dict[str, Any], ItemKey]] = []
            left: dict[str, list[dict[str, Any]]] = {}
            first_empty: tuple[Any, BucketKey] | None = None
            budget = _Budget(self.partitions, now)
            for name, entry, key, new_item in writes:
                if self._throttling and not internal:
                    before = stored(tables[name], key)
                    size = (
                        item_size(new_item)
                        if new_item is not None
                        else (before.size() if before is not None else 0)
                    )
                    buckets = _write_buckets(tables[name], key, before, new_item)
                    if not budget.take(dict.fromkeys(buckets, write_units(size))):
                        left.setdefault(name, []).append(entry)
                        first_empty = first_empty or (tables[name], budget.short)
                        continue
                kept.append((name, entry, key))
            if left and not kept:
                assert first_empty is not None
                table, bucket = first_empty
                self.throttled[f"{table.name}.BatchWriteItem"] += len(writes)
                return self._throttled(table, "Write", bucket, index="/index/" in bucket[0])
            forwarded = body
            if left:
                reduced: dict[str, list[dict[str, Any]]] = {}
                for name, entry, _ in kept:
                    reduced.setdefault(name, []).append(entry)
                forwarded = json.dumps({**request, "RequestItems": reduced}).encode()
            answer, usage = self._apply(
                environ, forwarded, [(name, key) for name, _, key in kept], now, False
            )
            if self._throttling and not internal:
                self.partitions.consume(usage, now)
        if left:
            for name, entries in left.items():
                self.throttled[f"{name}.BatchWriteItem"] += len(entries)
            answer = _merge_unprocessed(answer, "UnprocessedItems", left)
        return answer

    def _transact_write_items(
        self, request: dict[str, Any], environ: WSGIEnvironment, body: bytes, internal: bool
    ) -> Answer:
        entries = request.get("TransactItems")
        if not isinstance(entries, list) or not entries:
            raise _Unanalysable
        targets: list[tuple[Any, ItemKey, dict[str, Any] | None, bool]] = []
        for entry in entries:
            if not isinstance(entry, dict) or len(entry) != 1:
                raise _Unanalysable
            ((kind, spec),) = entry.items()
            if not isinstance(spec, dict):
                raise _Unanalysable
            table = self._table(environ, spec.get("TableName"))
            if kind == "Put":
                key = self._key(table, spec.get("Item"))
                targets.append((table, key, spec["Item"], True))
            elif kind in ("Update", "Delete", "ConditionCheck"):
                targets.append(
                    (table, self._key(table, spec.get("Key")), None, kind != "ConditionCheck")
                )
            else:
                raise _Unanalysable
        items = [(table.name, key) for table, key, _, _ in targets]
        hold = self.strictness.transaction_ms / 1000
        if internal or hold <= 0:
            return self._commit(targets, environ, body, internal)
        with self._in_flight_lock:
            busy = [item in self._in_flight for item in items]
            if not any(busy):
                self._in_flight.update(items)
        if any(busy):
            self.conflicts["TransactWriteItems"] += 1
            return _cancelled(["TransactionConflict" if b else None for b in busy])
        try:
            time.sleep(hold)  # the transaction is under way: its items are taken
            return self._commit(targets, environ, body, internal)
        finally:
            with self._in_flight_lock:
                self._in_flight.subtract(items)
                for item in items:
                    if self._in_flight[item] <= 0:
                        del self._in_flight[item]

    def _commit(
        self,
        targets: list[tuple[Any, ItemKey, dict[str, Any] | None, bool]],
        environ: WSGIEnvironment,
        body: bytes,
        internal: bool,
    ) -> Answer:
        with self.lock:
            now = time.monotonic()
            if self._throttling and not internal:
                codes: list[str | None] = []
                for table, key, new_item, _ in targets:
                    buckets = _write_buckets(table, key, stored(table, key), new_item)
                    codes.append(
                        _throttle_code(table) if self.partitions.exhausted(buckets, now) else None
                    )
                if any(codes):
                    self.throttled["TransactWriteItems"] += 1
                    return _cancelled(codes, index=False)
            written = [(table.name, key) for table, key, _, writes in targets if writes]
            answer, usage = self._apply(environ, body, written, now, True)
            if self._throttling and not internal:
                for table, key, _, writes in targets:
                    if not writes:  # a condition check reads the item transactionally
                        item = stored(table, key)
                        bucket = (table.name, "write", _json_key(key[0].to_json()))
                        size = item.size() if item is not None else 0
                        usage[bucket] = usage.get(bucket, 0) + write_units(size, True)
                self.partitions.consume(usage, now)
        return answer

    def _apply(
        self,
        environ: WSGIEnvironment,
        body: bytes,
        items: list[TableItem],
        now: float,
        transactional: bool,
    ) -> tuple[Answer, dict[BucketKey, float]]:
        """Forward a write to moto (the caller holds the lock); record what it changed in
        the history and return what it consumed."""
        backend = self._backend(environ)
        streams = self.streams
        streamed = streams is not None and any(
            streams.enabled(backend.get_table(name)) for name, _ in items
        )
        track = self.history.enabled or self._throttling or streamed
        before: dict[TableItem, Any] = {}
        if track:
            for name, key in items:
                before[(name, key)] = copy.deepcopy(stored(backend.get_table(name), key))
        answer = self.forward(environ, body)
        usage: dict[BucketKey, float] = {}
        if not track:
            return answer, usage
        for name, key in items:
            table = backend.get_table(name)  # a cancelled transaction swaps moto's tables
            old = before[(name, key)]
            new = stored(table, key)
            if _differs(old, new):
                self.history.record(table.name, key, old, now)
                if streamed and streams is not None:
                    streams.record(table, old, new)  # under the lock: in commit order
            for bucket, units in _write_usage(table, key, old, new, transactional).items():
                usage[bucket] = usage.get(bucket, 0) + units
        return answer, usage

    def _is_in_flight(self, item: TableItem) -> bool:
        with self._in_flight_lock:
            return item in self._in_flight

    # ------------------------------------------------------------ answers

    def _throttled(self, table: Any, kind: str, bucket: BucketKey, index: bool = False) -> Answer:
        self.throttled[f"{bucket[0]}.{kind.lower()}"] += 1
        resource = (
            f"{table.table_arn}/index/{bucket[0].split('/index/', 1)[1]}"
            if index
            else (table.table_arn)
        )
        target = "Index" if index else "Table"
        if table.billing_mode == "PAY_PER_REQUEST":
            reasons = [
                {"reason": f"{target}{kind}KeyRangeThroughputExceeded", "resource": resource}
            ]
            message = ON_DEMAND_INDEX_MESSAGE if index else ON_DEMAND_TABLE_MESSAGE
            return _error("ThrottlingException", message, throttlingReasons=reasons)
        reasons = [{"reason": f"{target}{kind}KeyRangeThroughputExceeded", "resource": resource}]
        return _error(
            "ProvisionedThroughputExceededException", PROVISIONED_MESSAGE, ThrottlingReasons=reasons
        )


# ---------------------------------------------------------------- helpers


class _Budget:
    """Plans a batch item by item: an item goes ahead while the tokens its buckets hold,
    less what the items before it will consume, stay positive."""

    def __init__(self, partitions: Partitions, now: float) -> None:
        self.partitions = partitions
        self.now = now
        self.left: dict[BucketKey, float] = {}
        self.short: BucketKey = ("", "", "")

    def take(self, usage: dict[BucketKey, float]) -> bool:
        missing = [key for key in usage if key not in self.left]
        self.left.update(self.partitions.tokens(missing, self.now))
        for key in usage:
            if self.left[key] <= 0:
                self.short = key
                return False
        for key, units in usage.items():
            self.left[key] -= units
        return True


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _region(environ: WSGIEnvironment) -> str:
    auth = str(environ.get("HTTP_AUTHORIZATION", ""))
    if "Credential=" in auth:
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        if len(scope) >= 3 and scope[2]:
            return scope[2]
    return "us-east-1"


def _index(indexes: list[Any] | None, name: Any) -> Any:
    if name is None:
        return None
    return next((index for index in indexes or [] if index.name == name), None)


def _hash_attribute(schema: list[dict[str, str]]) -> str:
    return next(k["AttributeName"] for k in schema if k["KeyType"] == "HASH")


def _query_partition(request: dict[str, Any], attribute: str) -> str | None:
    """The partition key value a Query asks for (its equality on the hash key)."""
    names = request.get("ExpressionAttributeNames") or {}
    values = request.get("ExpressionAttributeValues") or {}
    expression = request.get("KeyConditionExpression")
    if isinstance(expression, str):
        for match in _EQUALITY.finditer(expression):
            name, placeholder = (match[1], match[2]) if match[1] else (match[4], match[3])
            if names.get(name, name) == attribute and placeholder in values:
                return _json_key(_dynamo_type(values[placeholder]).to_json())
    legacy = (request.get("KeyConditions") or {}).get(attribute)
    if isinstance(legacy, dict) and legacy.get("AttributeValueList"):
        return _json_key(_dynamo_type(legacy["AttributeValueList"][0]).to_json())
    return None


def _gsi_partition(index: Any, attributes: Any) -> str | None:
    """The GSI partition of an item (a moto Item or DynamoDB JSON), None if not indexed."""
    if attributes is None:
        return None
    names = [k["AttributeName"] for k in index.schema]
    values = attributes.attrs if hasattr(attributes, "attrs") else attributes
    if not all(name in values for name in names):
        return None
    value = values[_hash_attribute(index.schema)]
    return _json_key(
        value.to_json() if hasattr(value, "to_json") else _dynamo_type(value).to_json()
    )


def _gsi_key(index: Any, item: Any) -> tuple[str, ...] | None:
    if item is None:
        return None
    names = [k["AttributeName"] for k in index.schema]
    if not all(name in item.attrs for name in names):
        return None
    return tuple(_json_key(item.attrs[name].to_json()) for name in names)


def _write_buckets(
    table: Any, key: ItemKey, before: Any, new_item: dict[str, Any] | None
) -> list[BucketKey]:
    """The write buckets a write to this item will draw on (as far as known beforehand)."""
    buckets: list[BucketKey] = [(table.name, "write", _json_key(key[0].to_json()))]
    for index in table.global_indexes or []:
        resource = f"{table.name}/index/{index.name}"
        for image in (before, new_item):
            partition = _gsi_partition(index, image)
            if partition is not None:
                buckets.append((resource, "write", partition))
    return buckets


def _write_usage(
    table: Any, key: ItemKey, before: Any, after: Any, transactional: bool
) -> dict[BucketKey, float]:
    size_before = before.size() if before is not None else 0
    size_after = after.size() if after is not None else 0
    usage: dict[BucketKey, float] = {
        (table.name, "write", _json_key(key[0].to_json())): write_units(
            max(size_before, size_after), transactional
        )
    }
    if before is None and after is None:
        return usage
    for index in table.global_indexes or []:
        resource = f"{table.name}/index/{index.name}"
        old, new = _gsi_key(index, before), _gsi_key(index, after)
        if old is not None and old == new:
            bucket = (resource, "write", old[0])
            usage[bucket] = usage.get(bucket, 0) + write_units(max(size_before, size_after))
            continue
        if old is not None:
            bucket = (resource, "write", old[0])
            usage[bucket] = usage.get(bucket, 0) + write_units(size_before)
        if new is not None:
            bucket = (resource, "write", new[0])
            usage[bucket] = usage.get(bucket, 0) + write_units(size_after)
    return usage


def _read_usage(
    payload: bytes,
    resource: str,
    hash_attribute: str,
    bucket: BucketKey | None,
    consistent: bool,
) -> dict[BucketKey, float]:
    """What a Query or Scan consumed: its items' sizes, per partition they came from."""
    try:
        items = json.loads(payload).get("Items") or []
    except (ValueError, AttributeError):
        return {}
    sizes: dict[BucketKey, int] = {}
    for item in items:
        if bucket is not None:
            target = bucket
        elif isinstance(item, dict) and hash_attribute in item:
            target = (resource, "read", _json_key(item[hash_attribute]))
        else:
            continue
        sizes[target] = sizes.get(target, 0) + item_size(item)
    if bucket is not None and not sizes:
        sizes[bucket] = 0  # an empty answer still costs its minimum
    return {target: read_units(size, consistent) for target, size in sizes.items()}


def _differs(before: Any, after: Any) -> bool:
    if before is None or after is None:
        return before is not after
    return bool(before.to_json() != after.to_json())


def _throttle_code(table: Any) -> str:
    return (
        "ThrottlingError"
        if table.billing_mode == "PAY_PER_REQUEST"
        else ("ProvisionedThroughputExceeded")
    )


_REASON_MESSAGES = {
    "TransactionConflict": "Transaction is ongoing for the item.",
    "ThrottlingError": ON_DEMAND_TABLE_MESSAGE,
    "ProvisionedThroughputExceeded": PROVISIONED_MESSAGE,
}


def _cancelled(codes: list[str | None], index: bool = False) -> Answer:
    reasons: list[dict[str, str]] = []
    for code in codes:
        if code is None:
            reasons.append({"Code": "None"})
        else:
            reasons.append({"Code": code, "Message": _REASON_MESSAGES.get(code, code)})
    listed = ", ".join(code or "None" for code in codes)
    message = (
        f"Transaction cancelled, please refer cancellation reasons for specific reasons [{listed}]"
    )
    return _error(
        "TransactionCanceledException", message, key="Message", CancellationReasons=reasons
    )


def _error(code: str, message: str, key: str = "message", **extra: Any) -> Answer:
    payload = {"__type": NAMESPACE + code, key: message, **extra}
    body = json.dumps(payload).encode()
    headers = [
        ("Content-Type", "application/x-amz-json-1.0"),
        ("x-amzn-RequestId", "local-strict"),
        ("Content-Length", str(len(body))),
    ]
    return "400 Bad Request", headers, body


def _merge_unprocessed(answer: Answer, field: str, unprocessed: dict[str, Any]) -> Answer:
    status, headers, payload = answer
    if not status.startswith("200"):
        return answer
    try:
        document = json.loads(payload or b"{}")
    except ValueError:
        return answer
    merged = dict(document.get(field) or {})
    for name, value in unprocessed.items():
        if field == "UnprocessedItems":
            merged[name] = [*merged.get(name, []), *value]
        else:
            previous = merged.get(name) or {}
            merged[name] = {**value, "Keys": [*previous.get("Keys", []), *value["Keys"]]}
    document[field] = merged
    body = json.dumps(document).encode()
    kept = [(k, v) for k, v in headers if k.lower() not in ("content-length", "x-amz-crc32")]
    return status, [*kept, ("Content-Length", str(len(body)))], body
