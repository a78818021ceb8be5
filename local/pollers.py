"""Event sources: SQS event source mappings and EventBridge schedules.

Per ``Type: SQS`` function event, LOCAL_POLLER_THREADS batches run at once (default 3, as
Lambda's event source scales out; ScalingConfig.MaximumConcurrency caps it), each behaving
like Lambda's poller: long-poll, gather up to BatchSize within
MaximumBatchingWindowInSeconds, invoke, then delete what succeeded (ReportBatchItemFailures
honoured). How messages are ordered, duplicated and made visible again after a failure is
local/queue_delivery.py: standard queues reorder and redeliver, FIFO queues keep their
group order, failures come back after the queue's VisibilityTimeout (times LOCAL_TIME_SCALE);
the redrive to the DLQ is moto's (on the receive after maxReceiveCount).

As in AWS, a poller receives and deletes with the function's own role (its credentials), so a
role without sqs:ReceiveMessage or sqs:DeleteMessage fails here as it would there. Releasing a
failed message early in a fast mode (ChangeMessageVisibility) is not something Lambda does, so
the stack does it with its own client.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from local.clock import BillingClock
from local.queue_delivery import ENVELOPE_BYTES, MAX_PAYLOAD, Arranger, Releases, is_copy
from local.runtime import InvokeResult
from local.strictness import Strictness
from local.template import ACCOUNT_ID, REGION, STACK_NAME, FunctionSpec, Template

log = logging.getLogger("local.pollers")

Invoke = Callable[[str, str], InvokeResult]

_FIFO_ATTRIBUTES = ("MessageGroupId", "MessageDeduplicationId", "SequenceNumber")
_RECEIVED = "_local_received"  # when the poller received a message (monotonic)


@dataclass
class PollerFault:
    """Skip the deletes of the next N batches, as if the poller died mid-batch."""

    die_after_invoke: int = 0


@dataclass
class PollerStats:
    batches: int = 0
    messages: int = 0
    deleted: int = 0
    failed: int = 0
    duplicates: int = 0
    held_back: int = 0


@dataclass
class SqsPoller:
    function_id: str
    event_name: str
    queue_id: str
    queue_url: str
    queue_arn: str
    batch_size: int
    window_seconds: float
    report_failures: bool
    enabled: bool
    invoke: Invoke
    sqs: Any  # signed with the function's credentials: receive and delete
    arranger: Arranger
    visibility_timeout: float  # the queue's, in seconds
    time_scale: float = 1.0
    stack_sqs: Any = None  # the stack's own client: the fast-mode release
    fault: PollerFault = field(default_factory=PollerFault)
    stats: PollerStats = field(default_factory=PollerStats)
    stop_event: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)
    threads: int = 1
    _threads: list[threading.Thread] = field(default_factory=list)
    _fault_lock: threading.Lock = field(default_factory=threading.Lock)
    _releases: Releases | None = None

    def start(self) -> None:
        if self.time_scale < 1:
            self._releases = Releases(self._make_visible, f"{self.function_id}-{self.event_name}")
        for index in range(self.threads):
            thread = threading.Thread(
                target=self._run,
                daemon=True,
                name=f"poller-{self.function_id}-{self.event_name}-{index}",
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.stop_event.set()
        if self._releases is not None:
            self._releases.stop()

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def add_die_after_invoke(self, count: int) -> None:
        with self._fault_lock:
            self.fault.die_after_invoke += count

    def clear_fault(self) -> None:
        with self._fault_lock:
            self.fault.die_after_invoke = 0

    def _take_die_fault(self) -> bool:
        with self._fault_lock:
            if self.fault.die_after_invoke > 0:
                self.fault.die_after_invoke -= 1
                return True
            return False

    # ------------------------------------------------------------ loop

    def _run(self) -> None:
        self.ready.set()
        while not self.stop_event.is_set():
            try:
                batch = self.arranger.batch(self._gather(), self.batch_size, self._record_bytes)
                if batch:
                    self._process(batch)
            except ClientError as exc:
                # e.g. AccessDenied: the function's role may not receive (logged by local/iam)
                code = exc.response.get("Error", {}).get("Code", "?")
                log.warning(
                    "poller %s/%s: %s from SQS; retrying in 5 s",
                    self.function_id,
                    self.event_name,
                    code,
                )
                self.stop_event.wait(5)
            except Exception:
                log.exception("poller %s/%s failed; retrying", self.function_id, self.event_name)
                self.stop_event.wait(1)

    def _receive(self, max_messages: int, wait: int) -> list[dict[str, Any]]:
        response = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = response.get("Messages", [])
        now = time.monotonic()
        for message in messages:
            message[_RECEIVED] = now
        return messages

    def _gather(self) -> list[dict[str, Any]]:
        """Receive until BatchSize messages, the batching window or Lambda's payload limit
        (the arranger holds back what does not fit for the next batch)."""
        # Short long-polls so that a stop request is honoured within a second.
        batch = self._receive(min(10, self.batch_size), 1)
        if not batch or self.window_seconds <= 0:
            return batch
        size = sum(self._record_bytes(m) for m in batch) + ENVELOPE_BYTES
        deadline = time.monotonic() + self.window_seconds
        while len(batch) < self.batch_size and size < MAX_PAYLOAD:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stop_event.is_set():
                break
            more = self._receive(min(10, self.batch_size - len(batch)), 0)
            if more:
                batch.extend(more)
                size += sum(self._record_bytes(m) for m in more)
            else:
                self.stop_event.wait(min(0.05, remaining))
        return batch

    def _record_bytes(self, message: dict[str, Any]) -> int:
        """The bytes of the message's record in the invocation's JSON."""
        return len(json.dumps(self._record(message)).encode())

    def _process(self, messages: list[dict[str, Any]]) -> None:
        with self._fault_lock:
            self.stats.batches += 1
            self.stats.messages += len(messages)
            self.stats.duplicates = self.arranger.duplicates
            self.stats.held_back = self.arranger.held_back
        event = {"Records": [self._record(m) for m in messages]}
        result = self.invoke(self.function_id, json.dumps(event))
        by_id = {m["MessageId"]: m for m in messages}
        if result.function_error:
            failed = set(by_id)
            log.info(
                "%s: function error on a batch of %d; none deleted (%s)",
                self.function_id,
                len(messages),
                result.error_type,
            )
        elif self.report_failures:
            failed = self._failed_ids(result.payload, set(by_id))
        else:
            failed = set()
        # A duplicate delivery is not the poller's to delete or retry: its first delivery is.
        copies = {mid for mid, m in by_id.items() if is_copy(m)}
        for mid in sorted(copies & failed):
            log.info(
                "%s: a duplicate delivery of %s failed; its first delivery's outcome stands",
                self.function_id,
                mid,
            )
        if self._take_die_fault():
            log.warning(
                "%s: injected poller death; %d messages left undeleted",
                self.function_id,
                len(messages),
            )
            self._retry_later([m for mid, m in by_id.items() if mid not in copies])
            return
        succeeded = [m for mid, m in by_id.items() if mid not in failed and mid not in copies]
        try:
            self._delete(succeeded)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            log.warning(
                "%s: could not delete %d processed messages (%s); they will be delivered again",
                self.function_id,
                len(succeeded),
                code,
            )
            failed |= {m["MessageId"] for m in succeeded}
            succeeded = []
        self._retry_later([by_id[mid] for mid in failed - copies])
        with self._fault_lock:
            self.stats.deleted += len(succeeded)
            self.stats.failed += len(failed - copies)

    def _failed_ids(self, payload: str, ids: set[str]) -> set[str]:
        # Lambda's rules: null/empty response or list = all succeeded; anything malformed or
        # naming an unknown message = the whole batch failed.
        try:
            response = json.loads(payload)
        except ValueError:
            return set(ids)
        if response is None:
            return set()
        if not isinstance(response, dict):
            log.warning(
                "%s: response is not an object; treating the batch as failed", self.function_id
            )
            return set(ids)
        failures = response.get("batchItemFailures")
        if not failures:
            return set()
        failed: set[str] = set()
        for item in failures:
            identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
            if not identifier or identifier not in ids:
                log.warning(
                    "%s: invalid batchItemFailures entry %r; the batch failed",
                    self.function_id,
                    item,
                )
                return set(ids)
            failed.add(identifier)
        return failed

    def _delete(self, messages: list[dict[str, Any]]) -> None:
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)
                ],
            )

    def _retry_later(self, messages: list[dict[str, Any]]) -> None:
        """Failed messages come back when the queue's VisibilityTimeout since their receive
        has passed: by themselves in AWS time, released early in a fast mode."""
        if self._releases is None or not messages:
            return
        when = max(m.get(_RECEIVED, time.monotonic()) for m in messages)
        self._releases.at(when + self.visibility_timeout * self.time_scale, messages)

    def _make_visible(self, messages: list[dict[str, Any]]) -> None:
        client = self.stack_sqs or self.sqs
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            client.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for i, m in enumerate(chunk)
                ],
            )

    def _record(self, message: dict[str, Any]) -> dict[str, Any]:
        system = message.get("Attributes", {})
        attributes = {
            key: str(system[key])
            for key in (
                "ApproximateReceiveCount",
                "SentTimestamp",
                "SenderId",
                "ApproximateFirstReceiveTimestamp",
                *_FIFO_ATTRIBUTES,
            )
            if key in system
        }
        record: dict[str, Any] = {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message.get("Body", ""),
            "attributes": attributes,
            "messageAttributes": {
                name: _message_attribute(value)
                for name, value in (message.get("MessageAttributes") or {}).items()
            },
            "md5OfBody": message.get("MD5OfBody", ""),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": REGION,
        }
        if message.get("MD5OfMessageAttributes"):
            record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
        return record


def _message_attribute(value: dict[str, Any]) -> dict[str, Any]:
    def b64(data: Any) -> str:
        return base64.b64encode(data if isinstance(data, bytes) else str(data).encode()).decode()

    converted: dict[str, Any] = {
        "stringListValues": list(value.get("StringListValues", [])),
        "binaryListValues": [b64(v) for v in value.get("BinaryListValues", [])],
        "dataType": value.get("DataType", "String"),
    }
    if "StringValue" in value:
        converted["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        converted["binaryValue"] = b64(value["BinaryValue"])
    return converted


# ---------------------------------------------------------------- schedules

_RATE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def rate_seconds(expression: str) -> int | None:
    match = _RATE.match(expression.strip())
    if not match:
        return None
    unit = match.group(2).rstrip("s")
    return int(match.group(1)) * _UNIT_SECONDS[unit]


@dataclass
class Schedule:
    """A schedule rule: EventBridge invokes its function asynchronously (so Lambda's async
    retries apply) and at least once: with duplicate_probability an event is delivered a
    second time, the same event (same id) at about the same moment."""

    function_id: str
    event_name: str
    expression: str
    input: str | None
    enabled: bool
    invoke: Invoke
    submit: Callable[[str, str, str], None] | None = None  # asynchronous invocation
    duplicate_probability: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    duplicates: int = 0
    clock: BillingClock = field(default_factory=BillingClock)
    last_run: float | None = None  # billing time (local/clock.py) of the last delivery
    started: float = field(default=0.0, init=False)
    stop_event: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def period(self) -> int | None:
        return rate_seconds(self.expression)

    def due(self) -> bool:
        """True when a rate(...) schedule's period has passed in billing time since its last
        delivery (or since the stack started): POST /_local/clock then runs it."""
        period = self.period
        if period is None or not self.enabled:
            return False
        since = self.last_run if self.last_run is not None else self.started
        return self.clock.timestamp() - since >= period

    def __post_init__(self) -> None:
        self.started = self.clock.timestamp()

    def payload(self) -> str:
        if self.input is not None:
            return self.input
        rule = f"{STACK_NAME}-{self.function_id}{self.event_name}"
        return json.dumps(
            {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": "Scheduled Event",
                "source": "aws.events",
                "account": ACCOUNT_ID,
                "time": self.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
                "region": REGION,
                "resources": [f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/{rule}"],
                "detail": {},
            }
        )

    def _twice(self) -> bool:
        if self.rng.random() < self.duplicate_probability:
            self.duplicates += 1
            log.info("%s/%s: this event is delivered twice", self.function_id, self.event_name)
            return True
        return False

    def run_once(self) -> InvokeResult:
        """Run now (POST /_local/schedules/...): the first delivery's result, after any
        duplicate delivery (run at the same time) has finished too."""
        payload = self.payload()
        self.last_run = self.clock.timestamp()
        duplicate: threading.Thread | None = None
        if self._twice():
            duplicate = threading.Thread(
                target=self.invoke, args=(self.function_id, payload), daemon=True
            )
            duplicate.start()
        result = self.invoke(self.function_id, payload)
        if duplicate is not None:
            duplicate.join()
        return result

    def fire(self) -> None:
        payload = self.payload()
        self.last_run = self.clock.timestamp()
        for _ in range(2 if self._twice() else 1):
            if self.submit is not None:
                self.submit(self.function_id, payload, str(uuid.uuid4()))
            else:
                self.invoke(self.function_id, payload)

    def start(self) -> bool:
        period = rate_seconds(self.expression)
        if period is None:
            log.warning(
                "%s/%s: schedule %r is not emulated (only rate(...) is); run it with "
                "POST /_local/schedules/%s/%s",
                self.function_id,
                self.event_name,
                self.expression,
                self.function_id,
                self.event_name,
            )
            return False
        if not self.enabled:
            return False

        def loop() -> None:
            while not self.stop_event.wait(period):
                try:
                    self.fire()
                except Exception:
                    log.exception("%s/%s: scheduled run failed", self.function_id, self.event_name)

        self._thread = threading.Thread(
            target=loop, name=f"schedule-{self.function_id}-{self.event_name}", daemon=True
        )
        self._thread.start()
        return True

    def stop(self) -> None:
        self.stop_event.set()


# ---------------------------------------------------------------- building from the template


def build_pollers(
    template: Template,
    functions: list[FunctionSpec],
    invoke: Invoke,
    sqs_for: Callable[[str], Any],
    stack_sqs: Any,
    strictness: Strictness,
) -> list[SqsPoller]:
    """sqs_for: function logical id -> an SQS client signed with that function's credentials;
    stack_sqs: the stack's own client."""
    pollers = []
    for function in functions:
        for event in function.events:
            if event.type != "SQS":
                continue
            props = event.properties
            queue_id = template.queue_by_arn(str(props["Queue"]))
            queue = template.resolve(template.resources[queue_id].properties)
            fifo = str(queue.get("FifoQueue", False)).lower() == "true"
            batch_size = int(props.get("BatchSize", 10))
            window = float(props.get("MaximumBatchingWindowInSeconds", 0))
            scaling = props.get("ScalingConfig") or {}
            threads = strictness.poller_threads
            if scaling.get("MaximumConcurrency") is not None:
                threads = min(threads, int(scaling["MaximumConcurrency"]))
            name = f"{function.logical_id}/{event.name}"
            pollers.append(
                SqsPoller(
                    function_id=function.logical_id,
                    event_name=event.name,
                    queue_id=queue_id,
                    queue_url=template.queue_url(queue_id),
                    queue_arn=str(props["Queue"]),
                    batch_size=batch_size,
                    window_seconds=window,
                    report_failures="ReportBatchItemFailures"
                    in (props.get("FunctionResponseTypes") or []),
                    enabled=str(props.get("Enabled", True)).lower() != "false",
                    invoke=invoke,
                    sqs=sqs_for(function.logical_id),
                    stack_sqs=stack_sqs,
                    arranger=Arranger(
                        fifo=fifo,
                        shuffle=strictness.sqs_shuffle,
                        duplicate_probability=strictness.sqs_duplicate_probability,
                        rng=strictness.random(f"sqs:{name}"),
                    ),
                    visibility_timeout=float(queue.get("VisibilityTimeout", 30)),
                    time_scale=strictness.time_scale,
                    threads=max(1, threads),
                )
            )
    return pollers


def build_schedules(
    functions: list[FunctionSpec],
    invoke: Invoke,
    strictness: Strictness,
    submit: Callable[[str, str, str], None] | None = None,
    clock: BillingClock | None = None,
) -> list[Schedule]:
    clock = clock or BillingClock()
    schedules = []
    for function in functions:
        for event in function.events:
            if event.type not in ("Schedule", "ScheduleV2"):
                continue
            props = event.properties
            expression = str(props.get("Schedule") or props.get("ScheduleExpression") or "")
            enabled = props.get("Enabled", True)
            state = str(props.get("State", "ENABLED")).upper()
            schedules.append(
                Schedule(
                    function_id=function.logical_id,
                    event_name=event.name,
                    expression=expression,
                    input=props.get("Input"),
                    enabled=str(enabled).lower() != "false" and state != "DISABLED",
                    invoke=invoke,
                    submit=submit,
                    duplicate_probability=strictness.schedule_duplicate_probability,
                    rng=strictness.random(f"schedule:{function.logical_id}/{event.name}"),
                    clock=clock,
                )
            )
    return schedules
