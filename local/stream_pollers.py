"""DynamoDB stream event sources: what Lambda's event source mapping does for ``Type: DynamoDB``.

Per function event, as Lambda runs it (written from the Lambda developer guide's DynamoDB
pages):
- It reads every shard of the stream with the function's role (DescribeStream,
  GetShardIterator at StartingPosition TRIM_HORIZON or LATEST, GetRecords), so a role without
  those permissions gets AccessDenied here as it would there (logged, retried every 5 s).
- FilterCriteria (up to five patterns, local/event_patterns.py) drop records before batching;
  a dropped record counts as processed.
- ParallelizationFactor N: each shard's records go to N lanes by partition key, so one key's
  records stay in order while different keys interleave; a lane runs one batch at a time.
- A batch holds up to BatchSize records (and at most 6 MB), gathered for up to
  MaximumBatchingWindowInSeconds once a first record is there.
- A function error retries the same batch, and nothing after it in that lane is delivered
  meanwhile (Lambda blocks the shard), until it succeeds, MaximumRetryAttempts retries have
  failed or its records are older than MaximumRecordAgeInSeconds. BisectBatchOnFunctionError
  splits a failed batch in two and runs the halves in order (a split does not use up a
  retry). With ReportBatchItemFailures the response's batchItemFailures move the checkpoint:
  the batch is retried from the lowest reported sequence number; an empty or null list is
  success; an itemIdentifier that is empty, null or not in the batch fails the whole batch.
- A batch that is given up goes, as its metadata (DDBStreamBatchInfo, as Lambda writes it), to
  DestinationConfig.OnFailure (an SQS queue or SNS topic, sent with the function's role);
  without one it is discarded with a WARNING line naming its sequence numbers.

Retries wait 1 s, doubling up to 60 s; those waits and the record age are multiplied by
LOCAL_TIME_SCALE (a record's age counts from when the poller read it, which it does at once).
Between reads a poller sleeps until the stream has a record for it, instead of polling four
times a second; the billing clock plays no part.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from local.dynamodb_streams import iterator_position
from local.event_patterns import Pattern, compile_pattern
from local.runtime import InvokeResult
from local.strictness import Strictness
from local.template import FunctionSpec, Template

log = logging.getLogger("local.streams")

Invoke = Callable[[str, str], InvokeResult]
WaitHint = Callable[[str, str, int, float], bool]  # stream ARN, shard, after, timeout

DEFAULT_BATCH_SIZE = 100
MAX_PAYLOAD = 6 * 1024 * 1024  # a synchronous invocation's payload
RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 60.0
DENIED_RETRY = 5.0
IDLE_WAIT = 5.0  # at most this long between reads of an idle shard


def _true(value: Any) -> bool:
    return str(value).lower() == "true"


@dataclass(frozen=True)
class StreamSource:
    """One ``Type: DynamoDB`` event, as its event source mapping is configured."""

    function_id: str
    function_arn: str
    event_name: str
    stream_arn: str
    starting_position: str
    batch_size: int = DEFAULT_BATCH_SIZE
    window_seconds: float = 0.0
    parallelization: int = 1
    report_failures: bool = False
    bisect: bool = False
    max_retries: int = -1  # -1: until the records expire
    max_record_age: float = -1.0
    on_failure: str | None = None
    filters: tuple[Pattern, ...] = ()
    enabled: bool = True

    @property
    def name(self) -> str:
        return f"{self.function_id}/{self.event_name}"


@dataclass
class StreamStats:
    records: int = 0  # read from the stream
    filtered: int = 0  # dropped by FilterCriteria
    invocations: int = 0
    delivered: int = 0  # records of invocations that succeeded for them
    function_errors: int = 0
    partial_failures: int = 0
    retries: int = 0
    bisections: int = 0
    discarded: int = 0  # records given up (sent to OnFailure, or dropped without one)
    on_failure_sent: int = 0
    read_errors: int = 0


@dataclass
class _Entry:
    record: dict[str, Any]  # the Lambda event's record
    sequence: int
    arrival: float  # monotonic, when the poller read it

    @property
    def size(self) -> int:
        return len(json.dumps(self.record))


@dataclass
class _Lane:
    entries: deque[_Entry] = field(default_factory=deque)
    cond: threading.Condition = field(default_factory=threading.Condition)


class _Outcome:
    OK = "ok"
    PARTIAL = "partial"
    FAILED = "failed"


class StreamPoller:
    def __init__(
        self,
        source: StreamSource,
        invoke: Invoke,
        client: Callable[[str], Any],
        queue_url: Callable[[str], str],
        wait_hint: WaitHint,
        time_scale: float = 1.0,
    ) -> None:
        self.source = source
        self.invoke = invoke
        self.client = client  # service -> a client signed with the function's credentials
        self.queue_url = queue_url  # queue ARN -> URL (an OnFailure queue)
        self.wait_hint = wait_hint
        self.time_scale = time_scale
        self.stats = StreamStats()
        self.state = "starting"
        self.shards: list[str] = []
        self.ready = threading.Event()
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._lanes: list[_Lane] = []
        self._hash_key = ""

    # ------------------------------------------------------------ lifecycle

    @property
    def enabled(self) -> bool:
        return self.source.enabled

    def start(self) -> None:
        self._spawn(self._supervise, "stream-" + self.source.name.replace("/", "-"))

    def stop(self) -> None:
        self.stop_event.set()
        for lane in self._lanes:
            with lane.cond:
                lane.cond.notify_all()

    def join(self, timeout: float) -> None:
        for thread in list(self._threads):
            thread.join(timeout)

    def describe(self) -> dict[str, Any]:
        source = self.source
        return {
            "stream": source.stream_arn,
            "state": self.state,
            "shards": len(self.shards),
            "starting_position": source.starting_position,
            "batch_size": source.batch_size,
            "parallelization_factor": source.parallelization,
            "on_failure": source.on_failure,
        }

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, amount in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + amount)

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = StreamStats()

    # ------------------------------------------------------------ reading

    def _denied(self, exc: ClientError, doing: str) -> None:
        code = exc.response.get("Error", {}).get("Code", "?")
        self.state = f"{code} on {doing}"
        if "AccessDenied" in code:
            # AWS checks this when it creates the mapping: the deploy would fail there.
            log.warning(
                "stream poller %s: %s on %s; in AWS creating this event source mapping fails: "
                "Cannot access stream %s. Please ensure the role can perform the GetRecords, "
                "GetShardIterator, DescribeStream, and ListStreams Actions on your stream in "
                "IAM. Retrying in %g s",
                self.source.name,
                code,
                doing,
                self.source.stream_arn,
                DENIED_RETRY,
            )
        else:
            log.warning(
                "stream poller %s: %s on %s; retrying in %g s",
                self.source.name,
                code,
                doing,
                DENIED_RETRY,
            )
        self._count(read_errors=1)

    def _supervise(self) -> None:
        """Find the shards and their starting iterators, then read each one."""
        streams = self.client("dynamodbstreams")
        source = self.source
        while not self.stop_event.is_set():
            try:
                described = streams.describe_stream(StreamArn=source.stream_arn)
                description = described["StreamDescription"]
                self._hash_key = next(
                    k["AttributeName"] for k in description["KeySchema"] if k["KeyType"] == "HASH"
                )
                shards = [s["ShardId"] for s in description["Shards"]]
                iterators = {
                    shard: streams.get_shard_iterator(
                        StreamArn=source.stream_arn,
                        ShardId=shard,
                        ShardIteratorType=source.starting_position,
                    )["ShardIterator"]
                    for shard in shards
                }
                break
            except ClientError as exc:
                self._denied(exc, "reading the stream")
                self.ready.set()  # the stack starts anyway, as the mapping exists in AWS
                if self.stop_event.wait(DENIED_RETRY):
                    return
        else:
            return
        self.shards = shards
        self.state = "polling"
        for shard in shards:
            lanes = [_Lane() for _ in range(source.parallelization)]
            self._lanes += lanes
            for index, lane in enumerate(lanes):
                self._spawn(self._run_lane, f"stream-lane-{source.name}-{index}", shard, lane)
            self._spawn(self._read, f"stream-read-{source.name}", shard, iterators[shard], lanes)
        self.ready.set()

    def _read(self, shard: str, iterator: str | None, lanes: list[_Lane]) -> None:
        streams = self.client("dynamodbstreams")
        arn = self.source.stream_arn
        last = iterator_position(iterator)
        while not self.stop_event.is_set():
            try:
                if iterator is None:
                    position: dict[str, str] = {"ShardIteratorType": "TRIM_HORIZON"}
                    if last is not None:  # go on after the last record read
                        position = {
                            "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
                            "SequenceNumber": str(last),
                        }
                    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, **position)[
                        "ShardIterator"
                    ]
                    last = iterator_position(iterator)
                response = streams.get_records(ShardIterator=iterator, Limit=1000)
                iterator = response.get("NextShardIterator")
                records = response.get("Records") or []
                if records:
                    last = int(records[-1]["dynamodb"]["SequenceNumber"])
                    self._dispatch(records, lanes)
                    continue
                if self.state != "polling":
                    self.state = "polling"
                self.wait_hint(arn, shard, last or 0, IDLE_WAIT)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "?")
                if code == "ExpiredIteratorException":
                    iterator = None
                    continue
                self._denied(exc, f"GetRecords of {shard}")
                if code == "TrimmedDataAccessException":
                    log.warning("stream poller %s: records of %s expired unread", arn, shard)
                    iterator, last = None, None
                if self.stop_event.wait(DENIED_RETRY):
                    return
            except Exception:
                log.exception("stream poller %s: reading %s failed", self.source.name, shard)
                if self.stop_event.wait(1):
                    return

    def _dispatch(self, records: list[dict[str, Any]], lanes: list[_Lane]) -> None:
        now = time.monotonic()
        kept = 0
        for raw in records:
            record = _lambda_record(raw, self.source.stream_arn)
            filters = self.source.filters
            if filters and not any(pattern.matches(record) for pattern in filters):
                self._count(records=1, filtered=1)
                continue
            kept += 1
            key = record["dynamodb"]["Keys"].get(self._hash_key)
            lane = lanes[_lane_of(key, len(lanes))]
            entry = _Entry(record, int(record["dynamodb"]["SequenceNumber"]), now)
            with lane.cond:
                lane.entries.append(entry)
                lane.cond.notify_all()
        self._count(records=kept)

    # ------------------------------------------------------------ batches

    def _run_lane(self, shard: str, lane: _Lane) -> None:
        while not self.stop_event.is_set():
            batch = self._take(lane)
            if batch:
                try:
                    self._deliver(shard, batch)
                except Exception:
                    log.exception("stream poller %s: a batch failed to run", self.source.name)

    def _take(self, lane: _Lane) -> list[_Entry]:
        source = self.source
        with lane.cond:
            while not lane.entries:
                if self.stop_event.is_set():
                    return []
                lane.cond.wait(IDLE_WAIT)  # notified by the reader, and by stop()
            if source.window_seconds > 0:
                deadline = lane.entries[0].arrival + source.window_seconds
                while len(lane.entries) < source.batch_size and not self.stop_event.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    lane.cond.wait(min(remaining, 0.5))
            batch: list[_Entry] = []
            size = 0
            while lane.entries and len(batch) < source.batch_size:
                entry_size = lane.entries[0].size
                if batch and size + entry_size > MAX_PAYLOAD:
                    break
                batch.append(lane.entries.popleft())
                size += entry_size
            return batch

    def _deliver(self, shard: str, entries: list[_Entry]) -> None:
        """Run one batch to its end: success, or given up (OnFailure); the lane waits."""
        source = self.source
        pending: deque[tuple[list[_Entry], int]] = deque([(entries, 0)])
        while pending and not self.stop_event.is_set():
            batch, retries = pending.popleft()
            invocations = 0
            last: InvokeResult | None = None
            while batch and not self.stop_event.is_set():
                batch = self._drop_expired(shard, batch, invocations, last)
                if not batch:
                    break
                last = self._invoke(batch)
                invocations += 1
                outcome, done = self._outcome(last, batch)
                if outcome == _Outcome.OK:
                    self._count(delivered=len(batch))
                    break
                if outcome == _Outcome.PARTIAL:
                    self._count(delivered=done, partial_failures=1)
                    batch = batch[done:]
                elif last.function_error:
                    self._count(function_errors=1)
                    if source.bisect and len(batch) > 1:
                        middle = len(batch) // 2
                        pending.appendleft((batch[middle:], retries))
                        pending.appendleft((batch[:middle], retries))
                        self._count(bisections=1)
                        log.info(
                            "%s: function error on a batch of %d; bisected",
                            source.name,
                            len(batch),
                        )
                        break
                retries += 1
                if 0 <= source.max_retries < retries:
                    self._give_up(shard, batch, "RetryAttemptsExhausted", invocations, last)
                    break
                delay = min(RETRY_DELAY * 2 ** (retries - 1), MAX_RETRY_DELAY) * self.time_scale
                log.info(
                    "%s: batch of %d from %s failed (%s); retry %d in %.2f s",
                    source.name,
                    len(batch),
                    batch[0].record["dynamodb"]["SequenceNumber"],
                    last.error_type if last.function_error else "batchItemFailures",
                    retries,
                    delay,
                )
                self._count(retries=1)
                if self.stop_event.wait(delay):
                    return

    def _drop_expired(
        self,
        shard: str,
        batch: list[_Entry],
        invocations: int,
        last: InvokeResult | None,
    ) -> list[_Entry]:
        if self.source.max_record_age < 0:
            return batch
        limit = self.source.max_record_age * self.time_scale
        now = time.monotonic()
        expired = 0
        while expired < len(batch) and now - batch[expired].arrival > limit:
            expired += 1
        if expired:
            self._give_up(shard, batch[:expired], "RecordAgeExceeded", invocations, last)
        return batch[expired:]

    def _invoke(self, batch: list[_Entry]) -> InvokeResult:
        self._count(invocations=1)
        payload = json.dumps({"Records": [entry.record for entry in batch]})
        return self.invoke(self.source.function_id, payload)

    def _outcome(self, result: InvokeResult, batch: list[_Entry]) -> tuple[str, int]:
        """OK, PARTIAL with how many records succeeded before the checkpoint, or FAILED."""
        if result.function_error:
            return _Outcome.FAILED, 0
        if not self.source.report_failures:
            return _Outcome.OK, len(batch)
        try:
            response = json.loads(result.payload) if result.payload.strip() else None
        except ValueError:
            response = None
        if response is None:
            return _Outcome.OK, len(batch)
        failures = response.get("batchItemFailures") if isinstance(response, dict) else None
        if isinstance(response, dict) and not failures:
            return _Outcome.OK, len(batch)
        positions = {str(entry.sequence): index for index, entry in enumerate(batch)}
        checkpoint = len(batch)
        for item in failures if isinstance(failures, list) else [failures]:
            identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
            if not isinstance(identifier, str) or identifier not in positions:
                log.warning(
                    "%s: invalid batchItemFailures entry %r; the whole batch failed",
                    self.source.name,
                    item,
                )
                return _Outcome.FAILED, 0
            checkpoint = min(checkpoint, positions[identifier])
        return _Outcome.PARTIAL, checkpoint

    # ------------------------------------------------------------ giving up

    def _give_up(
        self,
        shard: str,
        batch: list[_Entry],
        condition: str,
        invocations: int,
        last: InvokeResult | None,
    ) -> None:
        source = self.source
        self._count(discarded=len(batch))
        first, final = batch[0].record["dynamodb"], batch[-1].record["dynamodb"]
        span = f"{first['SequenceNumber']}..{final['SequenceNumber']}"
        if source.on_failure is None:
            log.warning(
                "%s: %d records of %s (%s) discarded: %s, and no OnFailure destination",
                source.name,
                len(batch),
                shard,
                span,
                condition,
            )
            return
        message = self._failure_record(shard, batch, condition, invocations, last)
        try:
            if source.on_failure.startswith("arn:aws:sns:"):
                self.client("sns").publish(TopicArn=source.on_failure, Message=message)
            else:
                self.client("sqs").send_message(
                    QueueUrl=self.queue_url(source.on_failure), MessageBody=message
                )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            log.warning(
                "%s: %d records of %s (%s) discarded (%s); sending them to %s failed: %s",
                source.name,
                len(batch),
                shard,
                span,
                condition,
                source.on_failure,
                code,
            )
            return
        self._count(on_failure_sent=1)
        log.warning(
            "%s: %d records of %s (%s) given up (%s); their metadata went to %s",
            source.name,
            len(batch),
            shard,
            span,
            condition,
            source.on_failure,
        )

    def _failure_record(
        self,
        shard: str,
        batch: list[_Entry],
        condition: str,
        invocations: int,
        last: InvokeResult | None,
    ) -> str:
        """The invocation record Lambda sends to an OnFailure destination for a stream."""
        first, final = batch[0].record["dynamodb"], batch[-1].record["dynamodb"]
        document: dict[str, Any] = {
            "requestContext": {
                "requestId": last.request_id if last is not None else str(uuid.uuid4()),
                "functionArn": self.source.function_arn,
                "condition": condition,
                "approximateInvokeCount": invocations,
            },
        }
        if last is not None:
            response: dict[str, Any] = {"statusCode": 200, "executedVersion": "$LATEST"}
            if last.function_error:
                response["functionError"] = "Unhandled"
            document["responseContext"] = response
        document.update(
            {
                "version": "1.0",
                "timestamp": datetime.now(UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "DDBStreamBatchInfo": {
                    "shardId": shard,
                    "startSequenceNumber": first["SequenceNumber"],
                    "endSequenceNumber": final["SequenceNumber"],
                    "approximateArrivalOfFirstRecord": _iso(first["ApproximateCreationDateTime"]),
                    "approximateArrivalOfLastRecord": _iso(final["ApproximateCreationDateTime"]),
                    "batchSize": len(batch),
                    "streamArn": self.source.stream_arn,
                },
            }
        )
        return json.dumps(document)


# ---------------------------------------------------------------- helpers


def _lane_of(key: Any, lanes: int) -> int:
    if lanes == 1:
        return 0
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "big") % lanes


def _plain(value: Any) -> Any:
    """boto3's parsed record back to the JSON Lambda sends: binary as base64, times as epoch
    seconds."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, datetime):
        return float(value.timestamp())
    return value


def _lambda_record(raw: dict[str, Any], stream_arn: str) -> dict[str, Any]:
    record: dict[str, Any] = _plain(raw)
    record["eventSourceARN"] = stream_arn
    return record


def _iso(epoch: Any) -> str:
    return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- from the template


def stream_source(template: Template, function: FunctionSpec, event_name: str) -> StreamSource:
    """The event source mapping of one DynamoDB event (deploy_checks validated it)."""
    event = next(e for e in function.events if e.name == event_name)
    props = event.properties
    destination = ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
    filters = [
        compile_pattern(item["Pattern"])
        for item in ((props.get("FilterCriteria") or {}).get("Filters") or [])
    ]
    return StreamSource(
        function_id=function.logical_id,
        function_arn=function.arn,
        event_name=event_name,
        stream_arn=str(props["Stream"]),
        starting_position=str(props.get("StartingPosition", "")),
        batch_size=int(props.get("BatchSize", DEFAULT_BATCH_SIZE)),
        window_seconds=float(props.get("MaximumBatchingWindowInSeconds", 0)),
        parallelization=int(props.get("ParallelizationFactor", 1)),
        report_failures="ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or []),
        bisect=_true(props.get("BisectBatchOnFunctionError", False)),
        max_retries=int(props.get("MaximumRetryAttempts", -1)),
        max_record_age=float(props.get("MaximumRecordAgeInSeconds", -1)),
        on_failure=str(destination) if destination else None,
        filters=tuple(filters),
        enabled=str(props.get("Enabled", True)).lower() != "false",
    )


def build_stream_pollers(
    template: Template,
    functions: list[FunctionSpec],
    invoke: Invoke,
    client_for: Callable[[str, str], Any],
    queue_url: Callable[[str], str],
    wait_hint: WaitHint,
    strictness: Strictness,
) -> list[StreamPoller]:
    """client_for: (function logical id, service) -> a client with that function's role."""
    pollers = []
    for function in functions:
        for event in function.events:
            if event.type != "DynamoDB":
                continue
            source = stream_source(template, function, event.name)

            def client(service: str, function_id: str = function.logical_id) -> Any:
                return client_for(function_id, service)

            pollers.append(
                StreamPoller(source, invoke, client, queue_url, wait_hint, strictness.time_scale)
            )
    return pollers
