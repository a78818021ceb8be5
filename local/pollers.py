"""Event sources: SQS event source mappings and EventBridge schedules.

One poller thread per ``Type: SQS`` function event (LOCAL_POLLER_THREADS for more), behaving
like Lambda's: long-poll, gather up to BatchSize within MaximumBatchingWindowInSeconds,
invoke, then delete what succeeded (ReportBatchItemFailures honoured). Failed messages are
made visible again after LOCAL_RETRY_DELAY_SECONDS (default 1) instead of the queue's full
VisibilityTimeout: a local speed-up so that retries and the redrive to the DLQ (done by moto
on the receive after maxReceiveCount) happen in seconds.

As in AWS, a poller receives and deletes with the function's own role (its credentials), so a
role without sqs:ReceiveMessage or sqs:DeleteMessage fails here as it would there. The retry
speed-up (ChangeMessageVisibility) is not something Lambda does, so the stack makes it itself.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from local.runtime import InvokeResult
from local.template import ACCOUNT_ID, REGION, STACK_NAME, FunctionSpec, Template

log = logging.getLogger("local.pollers")

Invoke = Callable[[str, str], InvokeResult]

_FIFO_ATTRIBUTES = ("MessageGroupId", "MessageDeduplicationId", "SequenceNumber")


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
    retry_delay: int
    stack_sqs: Any = None  # the stack's own client: the local retry speed-up
    fault: PollerFault = field(default_factory=PollerFault)
    stats: PollerStats = field(default_factory=PollerStats)
    stop_event: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)
    threads: int = 1
    _threads: list[threading.Thread] = field(default_factory=list)
    _fault_lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
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
                messages = self._gather()
                if messages:
                    self._process(messages)
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
        return messages

    def _gather(self) -> list[dict[str, Any]]:
        # Short long-polls so that a stop request is honoured within a second.
        batch = self._receive(min(10, self.batch_size), 1)
        if not batch or self.window_seconds <= 0:
            return batch
        deadline = time.monotonic() + self.window_seconds
        while len(batch) < self.batch_size and not self.stop_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            more = self._receive(min(10, self.batch_size - len(batch)), 0)
            if more:
                batch.extend(more)
            else:
                self.stop_event.wait(min(0.05, remaining))
        return batch

    def _process(self, messages: list[dict[str, Any]]) -> None:
        with self._fault_lock:
            self.stats.batches += 1
            self.stats.messages += len(messages)
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
        if self._take_die_fault():
            log.warning(
                "%s: injected poller death; %d messages left undeleted",
                self.function_id,
                len(messages),
            )
            self._retry_later(list(by_id.values()))
            return
        succeeded = [m for mid, m in by_id.items() if mid not in failed]
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
        self._retry_later([by_id[mid] for mid in failed])
        with self._fault_lock:
            self.stats.deleted += len(succeeded)
            self.stats.failed += len(failed)

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
        client = self.stack_sqs or self.sqs
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            client.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {
                        "Id": str(i),
                        "ReceiptHandle": m["ReceiptHandle"],
                        "VisibilityTimeout": self.retry_delay,
                    }
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
    function_id: str
    event_name: str
    expression: str
    input: str | None
    enabled: bool
    invoke: Invoke
    stop_event: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

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
                "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "region": REGION,
                "resources": [f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/{rule}"],
                "detail": {},
            }
        )

    def run_once(self) -> InvokeResult:
        return self.invoke(self.function_id, self.payload())

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
                    result = self.run_once()
                    if result.function_error:
                        log.warning(
                            "%s/%s: scheduled run failed: %s",
                            self.function_id,
                            self.event_name,
                            result.error_type,
                        )
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
) -> list[SqsPoller]:
    """sqs_for: function logical id -> an SQS client signed with that function's credentials;
    stack_sqs: the stack's own client."""
    retry_delay = int(os.environ.get("LOCAL_RETRY_DELAY_SECONDS", "1"))
    # Lambda runs several batches of a queue at once; locally one at a time unless asked.
    threads = max(1, int(os.environ.get("LOCAL_POLLER_THREADS", "1")))
    pollers = []
    for function in functions:
        for event in function.events:
            if event.type != "SQS":
                continue
            props = event.properties
            queue_id = template.queue_by_arn(str(props["Queue"]))
            batch_size = int(props.get("BatchSize", 10))
            window = float(props.get("MaximumBatchingWindowInSeconds", 0))
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
                    retry_delay=retry_delay,
                    threads=threads,
                )
            )
    return pollers


def build_schedules(functions: list[FunctionSpec], invoke: Invoke) -> list[Schedule]:
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
                )
            )
    return schedules
