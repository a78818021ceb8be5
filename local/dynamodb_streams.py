"""DynamoDB Streams in front of moto: the change records and the Streams API that reads them.

moto's own streams record every write call (identical rewrites too), keep one shard, never
trim and give no account of a transaction that was cancelled part-way; so the stack records
the changes itself. local/dynamodb_rules.py sees every item write that reaches moto (single
writes, BatchWriteItem, each item of a TransactWriteItems) with the item's image before and
after, under the embedded AWS's lock, and hands each committed change here:
- one record per change that changed the item (an identical PutItem or an UpdateItem that
  changes nothing writes none, as in AWS; a failed condition or a cancelled transaction
  changes nothing, so none either), INSERT / MODIFY / REMOVE, with the images the table's
  StreamViewType asks for (KEYS_ONLY, NEW_IMAGE, OLD_IMAGE, NEW_AND_OLD_IMAGES);
- in commit order per item: records are appended under the lock the write held;
- into one of LOCAL_STREAM_SHARDS shards (default 4) by the item's partition key, as a
  table's partitions feed their own shards: one key's records are always in one shard and in
  order, different keys' records are in no order across shards;
- kept 24 hours (the stream's retention), then trimmed.

The Streams API (ListStreams, DescribeStream, GetShardIterator, GetRecords) is answered from
here, after the IAM check (local/iam), so that a poller reading with a function's
credentials is authorized as in AWS. Shard iterators are opaque, carry their stream's ARN
(IAM authorizes GetRecords on it) and expire after 15 minutes. PartiQL writes and TTL
deletions are not recorded (see local/README.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from local.dynamodb_capacity import item_size

Answer = tuple[str, list[tuple[str, str]], bytes]

NAMESPACE = "com.amazonaws.dynamodb.v20120810#"
RETENTION_SECONDS = 24 * 3600.0
ITERATOR_LIFETIME = 15 * 60.0
SEQUENCE_BASE = 10**20  # 21-digit sequence numbers, as AWS's look
MAX_RECORDS = 1000  # GetRecords' Limit
MAX_RESPONSE_BYTES = 1024 * 1024  # GetRecords returns at most 1 MB
EVENT_VERSION = "1.1"
VIEW_TYPES = ("KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES")
OPERATIONS = ("ListStreams", "DescribeStream", "GetShardIterator", "GetRecords")


class StreamsError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Record:
    sequence: int
    created: float  # wall clock, seconds
    document: dict[str, Any]  # as GetRecords returns it
    size: int  # bytes in a GetRecords answer


@dataclass
class _Shard:
    shard_id: str
    records: deque[_Record] = field(default_factory=deque)
    trimmed_through: int = SEQUENCE_BASE  # every sequence number up to this one is gone


@dataclass
class TableStream:
    arn: str
    table_name: str
    label: str
    view_type: str
    key_schema: list[dict[str, str]]
    created: float
    shards: list[_Shard]
    records: int = 0  # ever recorded

    def describe_status(self, enabled: bool) -> str:
        return "ENABLED" if enabled else "DISABLED"


def _shard_ids(arn: str, count: int, created: float) -> list[str]:
    millis = int(created * 1000)
    ids = []
    for index in range(count):
        digest = hashlib.sha256(f"{arn}#{index}".encode()).hexdigest()[:8]
        ids.append(f"shardId-{millis:020d}-{digest}")
    return ids


def _partition(value: dict[str, Any], shards: int) -> int:
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "big") % shards


def stream_arn_of(table: Any) -> str:
    return f"{table.table_arn}/stream/{table.latest_stream_label}"


def stream_enabled(table: Any) -> bool:
    spec = getattr(table, "stream_specification", None) or {}
    return bool(spec.get("StreamEnabled")) and bool(getattr(table, "latest_stream_label", None))


class DynamoStreams:
    """Every stream-enabled table's change records, and the Streams API over them."""

    def __init__(self, shards: int, moto_lock: threading.Lock) -> None:
        self.shard_count = max(1, shards)
        self.moto_lock = moto_lock  # the embedded AWS's lock, to look at moto's tables
        self._lock = threading.Condition()
        self._closing = False
        self._streams: dict[str, TableStream] = {}
        self.recorded: Counter[str] = Counter()  # per table, for /_local/stats

    # ------------------------------------------------------------ recording

    def enabled(self, table: Any) -> bool:
        return stream_enabled(table)

    def record(self, table: Any, old: Any, new: Any) -> None:
        """One committed change of one item (moto Items before and after, None = absent).
        The caller holds the embedded AWS's lock, so records come in commit order."""
        if not stream_enabled(table) or (old is None and new is None):
            return
        old_image = _image(old)
        new_image = _image(new)
        if old_image == new_image:
            return  # nothing changed: DynamoDB writes no record
        image = new_image if new_image is not None else old_image
        assert image is not None
        keys = {table.hash_key_attr: image[table.hash_key_attr]}
        if table.range_key_attr is not None:
            keys[table.range_key_attr] = image[table.range_key_attr]
        now = time.time()
        with self._lock:
            stream = self._ensure(table, now)
            view = stream.view_type
            body: dict[str, Any] = {
                "ApproximateCreationDateTime": float(int(now)),  # rounded down to the second
                "Keys": keys,
            }
            if new_image is not None and view in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES"):
                body["NewImage"] = new_image
            if old_image is not None and view in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES"):
                body["OldImage"] = old_image
            sequence = SEQUENCE_BASE + stream.records + 1
            body["SequenceNumber"] = str(sequence)
            body["SizeBytes"] = (
                item_size(keys) + item_size(body.get("NewImage")) + item_size(body.get("OldImage"))
            )
            body["StreamViewType"] = view
            document = {
                "eventID": uuid.uuid4().hex,
                "eventName": "INSERT" if old is None else "REMOVE" if new is None else "MODIFY",
                "eventVersion": EVENT_VERSION,
                "eventSource": "aws:dynamodb",
                "awsRegion": table.region_name,
                "dynamodb": body,
            }
            shard = stream.shards[_partition(keys[table.hash_key_attr], len(stream.shards))]
            size = len(json.dumps(document))
            shard.records.append(_Record(sequence, now, document, size))
            stream.records += 1
            self.recorded[table.name] += 1
            self._trim(stream, now)
            self._lock.notify_all()

    def _ensure(self, table: Any, now: float) -> TableStream:
        """The stream of a table's current stream label (created on first sight)."""
        arn = stream_arn_of(table)
        stream = self._streams.get(arn)
        if stream is None:
            spec = table.stream_specification or {}
            stream = TableStream(
                arn=arn,
                table_name=table.name,
                label=table.latest_stream_label,
                view_type=str(spec.get("StreamViewType", "NEW_AND_OLD_IMAGES")),
                key_schema=list(table.schema),
                created=now,
                shards=[_Shard(i) for i in _shard_ids(arn, self.shard_count, now)],
            )
            self._streams[arn] = stream
        return stream

    @staticmethod
    def _trim(stream: TableStream, now: float) -> None:
        horizon = now - RETENTION_SECONDS
        for shard in stream.shards:
            while shard.records and shard.records[0].created < horizon:
                shard.trimmed_through = shard.records.popleft().sequence

    def wait_for_records(self, arn: str, shard_id: str, after: int, timeout: float) -> bool:
        """Block until the shard holds a record after ``after`` (or timeout): lets a poller
        sleep between reads instead of polling."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                stream = self._streams.get(arn)
                shard = _find_shard(stream, shard_id) if stream is not None else None
                if shard is not None and shard.records and shard.records[-1].sequence > after:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing:
                    return False
                self._lock.wait(remaining)

    def end_waits(self) -> None:
        """Wake every poller waiting for records, now and from now on: the stack stops."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self.recorded.items()))

    # ------------------------------------------------------------ the Streams API

    def handles(self, operation: str) -> bool:
        return operation in OPERATIONS

    def __call__(self, operation: str, body: bytes) -> Answer:
        try:
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                raise StreamsError("SerializationException", "Malformed request body") from None
            if not isinstance(request, dict):
                raise StreamsError("SerializationException", "Malformed request body")
            handler = {
                "ListStreams": self._list_streams,
                "DescribeStream": self._describe_stream,
                "GetShardIterator": self._get_shard_iterator,
                "GetRecords": self._get_records,
            }.get(operation)
            if handler is None:
                raise StreamsError("UnknownOperationException", f"Unknown operation {operation}")
            return _answer(200, handler(request))
        except StreamsError as exc:
            return _answer(400, {"__type": NAMESPACE + exc.code, "message": exc.message})

    def _moto_tables(self) -> list[Any]:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends

        with self.moto_lock:
            backend = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
            return list(backend.tables.values())

    def _live_arns(self) -> dict[str, Any]:
        """Stream ARN -> moto table, for every table whose stream is on now; their streams
        exist here from then on (a stream has no records until its first change)."""
        live = {stream_arn_of(t): t for t in self._moto_tables() if stream_enabled(t)}
        now = time.time()
        with self._lock:
            for table in live.values():
                self._ensure(table, now)
        return live

    def _stream(self, arn: Any) -> tuple[TableStream, bool]:
        if not isinstance(arn, str) or not arn:
            raise StreamsError("ValidationException", "StreamArn is required")
        live = self._live_arns()
        with self._lock:
            stream = self._streams.get(arn)
        if stream is None:
            message = f"Requested resource not found: Stream: {arn} not found"
            raise StreamsError("ResourceNotFoundException", message)
        return stream, arn in live

    def _list_streams(self, request: dict[str, Any]) -> dict[str, Any]:
        table_name = request.get("TableName")
        limit = _limit(request.get("Limit"), 100)
        start = request.get("ExclusiveStartStreamArn")
        self._live_arns()
        with self._lock:
            streams = sorted(self._streams.values(), key=lambda s: s.arn)
        if table_name is not None:
            if isinstance(table_name, str) and table_name.startswith("arn:"):
                table_name = table_name.split(":table/", 1)[-1]
            streams = [s for s in streams if s.table_name == table_name]
        if isinstance(start, str):
            streams = [s for s in streams if s.arn > start]
        page = streams[:limit]
        answer: dict[str, Any] = {
            "Streams": [
                {"StreamArn": s.arn, "TableName": s.table_name, "StreamLabel": s.label}
                for s in page
            ]
        }
        if len(streams) > limit:
            answer["LastEvaluatedStreamArn"] = page[-1].arn
        return answer

    def _describe_stream(self, request: dict[str, Any]) -> dict[str, Any]:
        stream, live = self._stream(request.get("StreamArn"))
        limit = _limit(request.get("Limit"), 100)
        start = request.get("ExclusiveStartShardId")
        shards = list(stream.shards)
        if isinstance(start, str):
            ids = [s.shard_id for s in shards]
            shards = shards[ids.index(start) + 1 :] if start in ids else []
        page = shards[:limit]
        description: dict[str, Any] = {
            "StreamArn": stream.arn,
            "StreamLabel": stream.label,
            "StreamStatus": stream.describe_status(live),
            "StreamViewType": stream.view_type,
            "CreationRequestDateTime": stream.created,
            "TableName": stream.table_name,
            "KeySchema": stream.key_schema,
            "Shards": [
                {
                    "ShardId": s.shard_id,
                    "SequenceNumberRange": {"StartingSequenceNumber": str(SEQUENCE_BASE + 1)},
                }
                for s in page
            ],
        }
        if len(shards) > limit:
            description["LastEvaluatedShardId"] = page[-1].shard_id
        return {"StreamDescription": description}

    def _get_shard_iterator(self, request: dict[str, Any]) -> dict[str, Any]:
        stream, _ = self._stream(request.get("StreamArn"))
        kind = request.get("ShardIteratorType")
        shard_id = request.get("ShardId")
        with self._lock:
            shard = _find_shard(stream, shard_id)
            if shard is None:
                raise StreamsError(
                    "ResourceNotFoundException",
                    f"Requested resource not found: Shard does not exist: {shard_id}",
                )
            if kind == "TRIM_HORIZON":
                after = shard.trimmed_through
            elif kind == "LATEST":
                after = shard.records[-1].sequence if shard.records else shard.trimmed_through
            elif kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
                number = request.get("SequenceNumber")
                if not isinstance(number, str) or not number.isdigit():
                    raise StreamsError(
                        "ValidationException",
                        f"SequenceNumber is required for ShardIteratorType {kind}",
                    )
                after = int(number) - (1 if kind == "AT_SEQUENCE_NUMBER" else 0)
                if after < shard.trimmed_through:
                    raise StreamsError(
                        "TrimmedDataAccessException",
                        "The operation attempted to read past the oldest stream record in a shard",
                    )
            else:
                raise StreamsError(
                    "ValidationException",
                    f"1 validation error detected: Value '{kind}' at 'shardIteratorType' failed "
                    "to satisfy constraint: Member must satisfy enum value set: "
                    "[AFTER_SEQUENCE_NUMBER, LATEST, AT_SEQUENCE_NUMBER, TRIM_HORIZON]",
                )
        return {"ShardIterator": _iterator(stream.arn, shard.shard_id, after, time.time())}

    def _get_records(self, request: dict[str, Any]) -> dict[str, Any]:
        arn, shard_id, after, issued = _parse_iterator(request.get("ShardIterator"))
        limit = _limit(request.get("Limit"), MAX_RECORDS)
        now = time.time()
        if now - issued > ITERATOR_LIFETIME:
            raise StreamsError(
                "ExpiredIteratorException",
                f"Iterator expired. The iterator was created at time {_iso(issued)} while right "
                f"now it is {_iso(now)} which is further in the future than the tolerated delay "
                f"of {int(ITERATOR_LIFETIME * 1000)} milliseconds.",
            )
        stream, _ = self._stream(arn)
        with self._lock:
            shard = _find_shard(stream, shard_id)
            if shard is None:
                raise StreamsError("ResourceNotFoundException", f"Shard does not exist: {shard_id}")
            if after < shard.trimmed_through:
                raise StreamsError(
                    "TrimmedDataAccessException",
                    "The operation attempted to read past the oldest stream record in a shard",
                )
            records: list[dict[str, Any]] = []
            size = 0
            last = after
            for record in shard.records:
                if record.sequence <= after:
                    continue
                if len(records) >= limit or (records and size + record.size > MAX_RESPONSE_BYTES):
                    break
                records.append(record.document)
                size += record.size
                last = record.sequence
        return {"Records": records, "NextShardIterator": _iterator(arn, shard_id, last, now)}


# ---------------------------------------------------------------- helpers


def _image(item: Any) -> dict[str, Any] | None:
    """A moto Item as plain DynamoDB JSON, detached from moto's own objects."""
    if item is None:
        return None
    from moto.dynamodb.models.utilities import dynamo_json_dump

    image: dict[str, Any] = json.loads(dynamo_json_dump(item.to_json()))["Attributes"]
    return image


def _find_shard(stream: TableStream | None, shard_id: Any) -> _Shard | None:
    if stream is None:
        return None
    return next((s for s in stream.shards if s.shard_id == shard_id), None)


def _limit(value: Any, highest: int) -> int:
    if value is None:
        return highest
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= highest:
        raise StreamsError(
            "ValidationException",
            f"1 validation error detected: Value '{value}' at 'limit' failed to satisfy "
            f"constraint: Member must have value between 1 and {highest}",
        )
    return value


def _iterator(arn: str, shard_id: str, after: int, issued: float) -> str:
    token = json.dumps({"s": shard_id, "a": after, "t": issued}, separators=(",", ":"))
    return f"{arn}|1|{base64.urlsafe_b64encode(token.encode()).decode()}"


def iterator_stream_arn(iterator: Any) -> str | None:
    """The stream an iterator belongs to (IAM authorizes GetRecords on it)."""
    if not isinstance(iterator, str) or "|" not in iterator:
        return None
    return iterator.split("|", 1)[0] or None


def _parse_iterator(iterator: Any) -> tuple[str, str, int, float]:
    invalid = StreamsError("ValidationException", "Invalid ShardIterator")
    if not isinstance(iterator, str):
        raise invalid
    arn, _, rest = iterator.partition("|1|")
    try:
        token = json.loads(base64.urlsafe_b64decode(rest.encode()))
        return arn, str(token["s"]), int(token["a"]), float(token["t"])
    except (ValueError, KeyError, TypeError):
        raise invalid from None


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _answer(status: int, payload: dict[str, Any]) -> Answer:
    body = json.dumps(payload).encode()
    headers = [
        ("Content-Type", "application/x-amz-json-1.0"),
        ("x-amzn-RequestId", str(uuid.uuid4())),
        ("Content-Length", str(len(body))),
    ]
    return f"{status} {'OK' if status == 200 else 'Bad Request'}", headers, body


def iterator_position(iterator: Any) -> int | None:
    """The sequence number an iterator reads after (None if it is not one of ours)."""
    try:
        return _parse_iterator(iterator)[2]
    except StreamsError:
        return None
