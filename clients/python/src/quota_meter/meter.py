"""`Meter`: charge, reserve, settle and release usage over the Lambda Invoke API.

    meter = Meter()                  # in AWS: region and credentials as boto3 finds them
    meter = Meter(endpoint_url="http://127.0.0.1:3000", region_name="us-east-1")  # local stack
    result = meter.charge(user_id="u1", model="gpt-4o", prompt_tokens=12, completion_tokens=30)
    with meter.hold(user_id="u1", model="gpt-4o", prompt_tokens=12, completion_tokens=512) as h:
        ...                                           # serve the request
        h.settle(prompt_tokens=12, completion_tokens=87)

Every event gets its request_id once, before the first attempt, and keeps it on every retry,
so a retry after a lost answer is answered `duplicate` by the function and applies nothing
twice. botocore's own retries are off (unless a `config` turns them back on): this module
retries with backoff and jitter, and also retries the function errors that are transient.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config

from quota_meter.events import (
    MAX_BATCH_EVENTS,
    build_batch_event,
    build_event,
)
from quota_meter.hold import Hold
from quota_meter.results import MeterError, Rejected, Result
from quota_meter.retry import RetryPolicy, is_transient_exception, is_transient_function_error
from quota_meter.usage_queue import UsageQueue

logger = logging.getLogger("quota_meter")

DEFAULT_FUNCTION = "MeterUsageFunction"
# The function's Timeout is 60 s: wait a little longer than that for an answer.
_DEFAULT_CONFIG = Config(
    retries={"total_max_attempts": 1},
    connect_timeout=5,
    read_timeout=65,
    max_pool_connections=64,
)


class Meter:
    """A metering client; thread-safe (one boto3 client per Meter, shared by its calls).

    `boto3_client_kwargs` go to `boto3.client("lambda", ...)` as they are: `endpoint_url`,
    `region_name`, credentials, `config` (merged over this client's defaults). With
    `queue_url`, charges go to the usage queue instead (fire and forget, status `queued`);
    `queue_endpoint_url` points the SQS client elsewhere than the Lambda one (locally the
    queues live in the embedded AWS, not behind the Invoke API).
    """

    def __init__(
        self,
        function_name: str = DEFAULT_FUNCTION,
        *,
        queue_url: str | None = None,
        queue_endpoint_url: str | None = None,
        retry: RetryPolicy | None = None,
        max_batch_events: int = MAX_BATCH_EVENTS,
        lambda_client: Any = None,
        sqs_client: Any = None,
        **boto3_client_kwargs: Any,
    ) -> None:
        if not 1 <= max_batch_events <= MAX_BATCH_EVENTS:
            raise ValueError(f"max_batch_events must be between 1 and {MAX_BATCH_EVENTS}")
        self.function_name = function_name
        self.retry = retry or RetryPolicy()
        self.max_batch_events = max_batch_events
        kwargs = dict(boto3_client_kwargs)
        config = kwargs.pop("config", None)
        merged = _DEFAULT_CONFIG.merge(config) if config is not None else _DEFAULT_CONFIG
        session = boto3.session.Session()  # the default session is not thread-safe
        self._lambda = lambda_client or session.client("lambda", config=merged, **kwargs)
        self.queue: UsageQueue | None = None
        if queue_url is not None:
            if queue_endpoint_url is not None:
                kwargs["endpoint_url"] = queue_endpoint_url
            sqs = sqs_client or session.client("sqs", config=merged, **kwargs)
            self.queue = UsageQueue(sqs, queue_url, self.retry)

    # ------------------------------------------------------------ one event

    def charge(self, **fields: Any) -> Result:
        """Debit the price of usage now (or queue it, in queue mode)."""
        event = build_event("charge", fields)
        if self.queue is not None:
            self.queue.send([event])
            return Result(request_id=event["request_id"], status="queued")
        return self._send_one(event)

    def reserve(self, **fields: Any) -> Result:
        """Hold the price of at most `prompt_tokens` + `completion_tokens`."""
        return self._send_one(build_event("reserve", fields))

    def settle(self, **fields: Any) -> Result:
        """Replace the hold of `request_id` by the price of the actual usage."""
        return self._send_one(build_event("settle", fields))

    def release(self, **fields: Any) -> Result:
        """Drop the hold of `request_id` (token counts may be left out)."""
        return self._send_one(build_event("release", fields))

    @contextmanager
    def hold(
        self,
        *,
        user_id: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        **fields: Any,
    ) -> Iterator[Hold]:
        """Reserve on entry (`Rejected` if refused); the block calls `.settle(...)`; leaving
        the block without a settle, or with an exception, releases the hold."""
        event = build_event(
            "reserve",
            {
                **fields,
                "user_id": user_id,
                "model": model,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
            },
        )
        reserved = self._send_one(event)
        if reserved.rejected or (reserved.status == "duplicate" and reserved.error):
            raise Rejected(reserved)
        extra: dict[str, Any] = {k: event[k] for k in ("group", "key_id") if k in event}
        held = Hold(self, event["request_id"], user_id, model, reserved, extra)
        try:
            yield held
        finally:
            held._release_if_open()

    def enqueue(self, events: Sequence[Mapping[str, Any]]) -> list[Result]:
        """Send any events to the usage queue (needs `queue_url`); each result is `queued`.

        The function meters them in any order (a settle before its reserve is billed as
        settled), so this is also the way to hand over usage when the Invoke API is down.
        """
        if self.queue is None:
            raise ValueError("enqueue needs a Meter made with queue_url")
        built = [build_batch_event(raw, index) for index, raw in enumerate(events)]
        self.queue.send(built)
        return [Result(request_id=e["request_id"], status="queued") for e in built]

    # ------------------------------------------------------------ many events

    def batch(self, events: Sequence[Mapping[str, Any]]) -> list[Result]:
        """Results in input order; one invocation per `max_batch_events` events.

        Every event is checked before the first call. In queue mode the charges go to the
        queue (`queued`) and the other actions are invoked. If a chunk cannot be metered,
        MeterError carries the results of the chunks before it (`.results`) and the
        request_ids of this and every later event (`.request_ids`), to send again.
        """
        built = [build_batch_event(raw, index) for index, raw in enumerate(events)]
        results: list[Result | None] = [None] * len(built)
        invoked = list(range(len(built)))
        if self.queue is not None:
            queued = [i for i in invoked if built[i]["action"] == "charge"]
            if queued:
                self.queue.send([built[i] for i in queued])
            for i in queued:
                results[i] = Result(request_id=built[i]["request_id"], status="queued")
            invoked = [i for i in invoked if built[i]["action"] != "charge"]
        for start in range(0, len(invoked), self.max_batch_events):
            chunk = invoked[start : start + self.max_batch_events]
            try:
                answers = self._send_batch([built[i] for i in chunk])
            except MeterError as exc:
                exc.request_ids = [built[i]["request_id"] for i in invoked[start:]]
                exc.results = [r for r in results if r is not None]
                raise
            for i, answer in zip(chunk, answers, strict=True):
                results[i] = answer
        return [r for r in results if r is not None]

    # ------------------------------------------------------------ the Invoke API

    def _send_one(self, event: dict[str, Any]) -> Result:
        answer, attempts = self._invoke(event, [event["request_id"]])
        return Result.from_payload(answer, request_id=event["request_id"], attempts=attempts)

    def _send_batch(self, events: list[dict[str, Any]]) -> list[Result]:
        ids = [e["request_id"] for e in events]
        answer, attempts = self._invoke({"events": events}, ids)
        raw = answer.get("results") if isinstance(answer, Mapping) else None
        if not isinstance(raw, list) or len(raw) != len(events):
            raise MeterError(
                f"The metering function answered a batch of {len(events)} with {answer!r:.200}",
                request_ids=ids,
            )
        return [
            Result.from_payload(item, request_id=rid, attempts=attempts)
            for item, rid in zip(raw, ids, strict=True)
        ]

    def _invoke(self, payload: Any, request_ids: list[str]) -> tuple[Any, int]:
        """The function's answer and the number of attempts it took."""
        body = json.dumps(payload).encode()
        attempt = 0
        while True:
            attempt += 1
            last = attempt >= self.retry.max_attempts
            try:
                response = self._lambda.invoke(
                    FunctionName=self.function_name,
                    InvocationType="RequestResponse",
                    Payload=body,
                )
                raw = response["Payload"].read()
            except Exception as exc:
                transient = is_transient_exception(exc)
                if transient and not last:
                    self._pause(attempt, f"{type(exc).__name__}")
                    continue
                raise MeterError(
                    f"Invoking {self.function_name} failed after {attempt} attempt(s): {exc}",
                    request_ids=request_ids,
                    retryable=transient,
                    attempts=attempt,
                ) from exc
            answer = _parse(raw, request_ids)
            if response.get("FunctionError"):
                transient = is_transient_function_error(answer)
                if transient and not last:
                    self._pause(attempt, str(_error_type(answer)))
                    continue
                raise MeterError(
                    f"{self.function_name} failed ({_error_type(answer)}) after {attempt} "
                    f"attempt(s): {_error_message(answer)}",
                    request_ids=request_ids,
                    retryable=transient,
                    attempts=attempt,
                    code=_error_type(answer),
                )
            if isinstance(answer, Mapping) and isinstance(answer.get("error"), Mapping):
                # The function refused the payload as a whole (the checks above should
                # have caught it): not retryable as it is.
                error = answer["error"]
                raise MeterError(
                    f"{self.function_name} refused the payload: {error.get('message')}",
                    request_ids=request_ids,
                    code=error.get("code"),
                    attempts=attempt,
                )
            return answer, attempt

    def _pause(self, attempt: int, reason: str) -> None:
        delay = self.retry.delay(attempt)
        logger.info("metering attempt %d failed (%s); retrying in %.3f s", attempt, reason, delay)
        time.sleep(delay)


def _parse(raw: bytes, request_ids: list[str]) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError as exc:
        raise MeterError(
            "The metering function answered something that is not JSON",
            request_ids=request_ids,
        ) from exc


def _error_type(answer: Any) -> Any:
    return answer.get("errorType") if isinstance(answer, Mapping) else None


def _error_message(answer: Any) -> Any:
    return answer.get("errorMessage") if isinstance(answer, Mapping) else answer
