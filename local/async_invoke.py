"""Lambda's asynchronous invocation (``InvocationType: Event``, and EventBridge schedules).

Lambda queues the event and answers 202 at once; when the function returns an error it
runs it again, by default twice: one minute after the first attempt, then two minutes after
the second (EventInvokeConfig.MaximumRetryAttempts 0..2 and MaximumEventAgeInSeconds
change that). Each attempt keeps the request id. An event that still fails is discarded,
as Lambda does without an OnFailure destination or dead-letter queue: this stack says so
in its output, with the request id, so that nothing goes unnoticed. The waits are multiplied
by LOCAL_TIME_SCALE; LOCAL_ASYNC_RETRIES=0 runs each event once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from local.runtime import InvokeResult
from local.template import Template

log = logging.getLogger("local.async")

RETRY_DELAYS = (60.0, 120.0)  # seconds before the first and the second retry
DEFAULT_MAX_AGE = 21600.0

Invoke = Callable[[str, str, str], InvokeResult]


@dataclass(frozen=True)
class AsyncConfig:
    maximum_retry_attempts: int = 2
    maximum_event_age: float = DEFAULT_MAX_AGE


class AsyncInvoker:
    def __init__(
        self,
        invoke: Invoke,
        configs: dict[str, AsyncConfig],
        *,
        retries: bool,
        time_scale: float,
    ) -> None:
        self.invoke = invoke
        self.configs = configs
        self.retries = retries
        self.time_scale = time_scale
        self._stop = threading.Event()
        self.discarded = 0
        self.retried = 0

    def submit(self, function: str, payload: str, request_id: str) -> None:
        threading.Thread(
            target=self._run,
            args=(function, payload, request_id),
            name=f"event-{function}",
            daemon=True,
        ).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, function: str, payload: str, request_id: str) -> None:
        config = self.configs.get(function, AsyncConfig())
        attempts = 1 + (config.maximum_retry_attempts if self.retries else 0)
        started = time.monotonic()
        for attempt in range(1, attempts + 1):
            try:
                result = self.invoke(function, payload, request_id)
            except Exception:
                log.exception("%s: asynchronous invocation %s failed", function, request_id)
                return
            if not result.function_error:
                return
            if attempt == attempts:
                break
            delay = RETRY_DELAYS[min(attempt - 1, len(RETRY_DELAYS) - 1)]
            age = time.monotonic() - started + delay * self.time_scale
            if age > config.maximum_event_age * self.time_scale:
                break
            log.info(
                "%s: asynchronous invocation %s failed (%s); retry %d of %d in %gs",
                function,
                request_id,
                result.error_type,
                attempt,
                attempts - 1,
                delay * self.time_scale,
            )
            self.retried += 1
            if self._stop.wait(delay * self.time_scale):
                return
        self.discarded += 1
        log.warning(
            "%s: asynchronous invocation %s discarded after %d attempts (no OnFailure "
            "destination): %s",
            function,
            request_id,
            attempt,
            result.error_type,
        )


def async_configs(template: Template) -> dict[str, AsyncConfig]:
    """Each function's EventInvokeConfig (SAM's property), as far as it changes retries."""
    configs: dict[str, AsyncConfig] = {}
    for function_id in template.function_ids():
        props = template.function_properties(function_id)
        config = template.resolve(props.get("EventInvokeConfig") or {})
        configs[function_id] = AsyncConfig(
            maximum_retry_attempts=int(config.get("MaximumRetryAttempts", 2)),
            maximum_event_age=float(config.get("MaximumEventAgeInSeconds", DEFAULT_MAX_AGE)),
        )
    return configs
