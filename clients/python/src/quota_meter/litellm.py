"""The LiteLLM proxy callback: every proxied call reserves, then settles once or releases.

In the proxy's config.yaml:

    litellm_settings:
      callbacks: quota_meter.litellm.callback

Configured by the environment (read when the proxy loads the callback; see
quota_meter.gateway_settings):
    QUOTA_METER_FUNCTION            the metering function (default MeterUsageFunction)
    QUOTA_METER_ENDPOINT_URL        the Invoke API endpoint (default: AWS, as boto3 finds it;
                                    region and credentials as boto3 reads them too)
    QUOTA_METER_MODEL_MAP           JSON {"proxy model name": "our model name"} (default same)
    QUOTA_METER_DEFAULT_MAX_TOKENS  completion tokens held when a request names no max (4096)
    QUOTA_METER_SEND_KEY_ID         "true": send the LiteLLM key's id as `key_id` (spend limits)
    QUOTA_METER_QUEUE_URL           optional: settles that cannot be delivered go to this usage
    QUOTA_METER_QUEUE_ENDPOINT_URL  queue (and its SQS endpoint) instead of being only logged

Before the call (`async_pre_call_hook`): the user is the request's `user` field, else the
key's `user_id`; the hold is the request's prompt (LiteLLM's token counter) plus its
`max_completion_tokens`/`max_tokens` (else the default). A refusal answers HTTP 402 with
`{"error": {"code": "<insufficient_quota|limit_exceeded|...>", ...}}`; a metering backend
that cannot be reached answers 503 (`metering_unavailable`): the proxy fails closed.
After a success (`async_log_success_event`, streams included: LiteLLM asks the upstream for
the final usage chunk and assembles it), the hold is settled with the usage LiteLLM reports.
On a failure (`async_log_failure_event`, `async_post_call_failure_hook`) or a client that
goes away mid-stream, the hold is released. Each call's hooks find its hold by the request
id put in the call's metadata at reserve time; a state table makes the first of settle and
release the only one.

Our request id is the call's `litellm_call_id` plus a random suffix: a client may choose
its call id (header `x-litellm-call-id`), and a reused id must never meet an earlier hold.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyException

from quota_meter.events import MAX_NAME
from quota_meter.gateway_settings import Settings
from quota_meter.meter import Meter
from quota_meter.results import MeterError

logger = logging.getLogger("quota_meter.litellm")

METADATA_KEY = "quota_meter_request_id"
# Proxy call types that carry token usage; others pass unmetered (logged once each).
METERED_CALL_TYPES = frozenset(
    {
        "completion",
        "acompletion",
        "text_completion",
        "atext_completion",
        "embeddings",
        "aembedding",
        "responses",
        "aresponses",
    }
)
# A call whose hooks never come back (a crash of the proxy's task) is forgotten after this;
# its hold is released by the backend's sweeper at the end of its lifetime.
STATE_TTL_SECONDS = 3600.0


class QuotaRefusal(ProxyException):
    """What the proxy answers as `status` with `{"error": {"code": <our code>, ...}}`.

    LiteLLM's ProxyException handler sends `{"error": exc.to_dict()}` with the status from
    `exc.code`, and its `to_dict` puts that status in `code` too: ours keeps the status
    there for the handler and answers our error code in the body.
    """

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message=message, type=error_code, param=None, code=status)
        self.error_code = error_code

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.error_code, "message": self.message, "type": self.type, "param": None}


@dataclass
class _Call:
    """One proxied call's hold, from its reserve to its settle or release."""

    request_id: str
    call_id: str | None
    user_id: str
    model: str
    fields: dict[str, Any]
    state: str = "open"  # open → settled | released
    created: float = field(default_factory=time.monotonic)


class QuotaMeterCallback(CustomLogger):
    def __init__(
        self,
        settings: Settings | None = None,
        meter_factory: Callable[[Settings], Meter] | None = None,
    ) -> None:
        super().__init__()
        self._settings = settings
        self._meter_factory = meter_factory or _default_meter
        self._meter: Meter | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._calls: dict[str, _Call] = {}
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._unmetered_logged: set[str] = set()

    # ------------------------------------------------------------ set-up

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings

    @property
    def meter(self) -> Meter:
        with self._lock:
            if self._meter is None:
                self._meter = self._meter_factory(self.settings)
                self._executor = ThreadPoolExecutor(
                    max_workers=32, thread_name_prefix="quota-meter"
                )
            return self._meter

    async def _run(self, method: Callable[..., Any], **fields: Any) -> Any:
        """A blocking Meter call on the callback's own threads (boto3 is synchronous)."""
        meter = self.meter
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: method(meter, **fields))

    # ------------------------------------------------------------ before the call

    async def async_pre_call_hook(
        self,
        user_api_key_dict: Any,
        cache: Any,
        data: dict[str, Any],
        call_type: str,
    ) -> dict[str, Any]:
        if call_type not in METERED_CALL_TYPES:
            if call_type not in self._unmetered_logged:
                self._unmetered_logged.add(call_type)
                logger.warning("call type %s is not metered by quota_meter", call_type)
            return data
        user_id = data.get("user") or getattr(user_api_key_dict, "user_id", None)
        if not isinstance(user_id, str) or not user_id or len(user_id) > MAX_NAME:
            raise QuotaRefusal(400, "user_required", "The request names no user to bill.")
        proxy_model = str(data.get("model") or "")
        model = self.settings.model_map.get(proxy_model, proxy_model)
        fields: dict[str, Any] = {}
        key_id = getattr(user_api_key_dict, "token", None)
        if self.settings.send_key_id and isinstance(key_id, str) and key_id:
            fields["key_id"] = key_id[:MAX_NAME]
        call_id = data.get("litellm_call_id")
        call_id = call_id if isinstance(call_id, str) else None
        request_id = f"{(call_id or 'litellm')[:100]}:{uuid.uuid4().hex[:16]}"
        prompt_tokens = _prompt_tokens(proxy_model, data, call_type)
        max_tokens = _max_tokens(data, call_type, self.settings.default_max_tokens)
        try:
            reserved = await self._run(
                Meter.reserve,
                request_id=request_id,
                user_id=user_id,
                model=model,
                prompt_tokens=prompt_tokens,
                completion_tokens=max_tokens,
                **fields,
            )
        except MeterError as exc:
            logger.error("reserve %s failed: %s", request_id, exc)
            raise QuotaRefusal(
                503, "metering_unavailable", "Usage metering is unavailable; try again."
            ) from None
        if reserved.rejected or reserved.error:
            raise QuotaRefusal(
                402, reserved.error or "rejected", reserved.message or "Quota refused."
            )
        self._remember(_Call(request_id, call_id, user_id, model, fields))
        metadata = data.get("metadata")
        if not isinstance(metadata, dict):
            metadata = data["metadata"] = {}
        metadata[METADATA_KEY] = request_id
        if isinstance(data.get("litellm_metadata"), dict):  # the routes that log this one
            data["litellm_metadata"][METADATA_KEY] = request_id
        return data

    # ------------------------------------------------------------ after the call

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        call = self._find(kwargs)
        if call is None:
            return
        if _metadata(kwargs).get("client_disconnected"):
            await self._release(call, "client disconnected")
            return
        prompt_tokens, completion_tokens = _usage(response_obj, kwargs)
        if not self._finish(call, "settled"):
            return
        settle = {
            "request_id": call.request_id,
            "user_id": call.user_id,
            "model": call.model,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            **call.fields,
        }
        try:
            result = await self._run(Meter.settle, **settle)
        except MeterError as exc:
            await self._keep_unsettled(settle, exc)
            return
        if result.rejected:
            # The usage happened but could not be billed (e.g. the hold expired and the
            # account is gone): the backend keeps such usage for an admin; say so here.
            logger.error("settle %s rejected: %s %s", call.request_id, result.error, result.message)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        call = self._find(kwargs)
        if call is not None:
            await self._release(call, "call failed")

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        call = self._find(request_data)
        if call is not None:
            await self._release(call, f"call failed: {type(original_exception).__name__}")

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        call = self._find(request_data)
        finished = False
        try:
            async for item in response:
                yield item
            finished = True
        finally:
            if not finished and call is not None:
                # The client went away (or the stream broke): release without waiting here,
                # where the task may be being cancelled.
                self._spawn(self._release(call, "stream ended early"))

    # ------------------------------------------------------------ state

    def _remember(self, call: _Call) -> None:
        now = time.monotonic()
        with self._lock:
            stale = [k for k, c in self._calls.items() if now - c.created > STATE_TTL_SECONDS]
            for key in stale:
                del self._calls[key]
            self._calls[call.request_id] = call

    def _find(self, kwargs: Mapping[str, Any]) -> _Call | None:
        request_id = _metadata(kwargs).get(METADATA_KEY)
        if not isinstance(request_id, str):
            return None
        with self._lock:
            return self._calls.get(request_id)

    def _finish(self, call: _Call, state: str) -> bool:
        """Move the call from open to `state`; False if another hook got there first."""
        with self._lock:
            if call.state != "open":
                return False
            call.state = state
            self._calls.pop(call.request_id, None)
            return True

    async def _release(self, call: _Call, reason: str) -> None:
        if not self._finish(call, "released"):
            return
        try:
            await self._run(
                Meter.release,
                request_id=call.request_id,
                user_id=call.user_id,
                model=call.model,
                **call.fields,
            )
        except MeterError as exc:
            # Harmless: the backend's sweeper drops the hold at the end of its lifetime.
            logger.warning("release %s (%s) failed: %s", call.request_id, reason, exc)

    async def _keep_unsettled(self, settle: dict[str, Any], exc: MeterError) -> None:
        """A settle that could not be delivered: the usage happened, so it must not be lost."""
        queue_url = self.settings.queue_url
        if queue_url is not None:
            try:
                await self._run(Meter.enqueue, events=[{"action": "settle", **settle}])
                logger.warning("settle %s queued after: %s", settle["request_id"], exc)
                return
            except MeterError as queue_exc:
                exc = queue_exc
        # Last resort, for an operator to replay (no secrets in a usage event).
        logger.error("UNSETTLED USAGE %s: %s", json.dumps(settle), exc)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _default_meter(settings: Settings) -> Meter:
    return Meter(
        settings.function_name,
        endpoint_url=settings.endpoint_url,
        queue_url=settings.queue_url,
        queue_endpoint_url=settings.queue_endpoint_url,
    )


def _metadata(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The call's metadata: in the request data, or in the logged call's litellm_params."""
    for holder in (kwargs.get("litellm_params"), kwargs):
        if isinstance(holder, Mapping):
            for name in ("metadata", "litellm_metadata"):
                metadata = holder.get(name)
                if isinstance(metadata, Mapping) and METADATA_KEY in metadata:
                    return metadata
    return {}


def _prompt_tokens(model: str, data: Mapping[str, Any], call_type: str) -> int:
    try:
        if isinstance(data.get("messages"), list):
            return int(litellm.token_counter(model=model, messages=data["messages"]))
        text = data.get("prompt", data.get("input"))
        if isinstance(text, str | list) and text:
            items = [text] if isinstance(text, str) else [str(t) for t in text]
            return int(litellm.token_counter(model=model, text=items))
    except Exception as exc:  # a tokenizer failure must not turn into a free call
        logger.warning("token count failed for %s (%s); holding the prompt as text", model, exc)
        return len(json.dumps(data.get("messages") or data.get("prompt") or ""))
    return 0


def _max_tokens(data: Mapping[str, Any], call_type: str, default: int) -> int:
    if call_type in ("embeddings", "aembedding"):
        return 0
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return default


def _usage(response_obj: Any, kwargs: Mapping[str, Any]) -> tuple[int, int]:
    """Prompt and completion tokens as LiteLLM reports them (the final usage of a stream)."""
    usage = getattr(response_obj, "usage", None)
    if usage is None and isinstance(response_obj, Mapping):
        usage = response_obj.get("usage")
    prompt = _token_field(usage, "prompt_tokens", "input_tokens")
    completion = _token_field(usage, "completion_tokens", "output_tokens")
    if prompt is None and completion is None:
        logged = kwargs.get("standard_logging_object")
        if isinstance(logged, Mapping):
            prompt = _as_int(logged.get("prompt_tokens"))
            completion = _as_int(logged.get("completion_tokens"))
    return prompt or 0, completion or 0


def _token_field(usage: Any, *names: str) -> int | None:
    for name in names:
        value = usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)
        number = _as_int(value)
        if number is not None:
            return number
    return None


def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# Settings are read (and checked) when the proxy imports the callback: bad ones stop it.
callback = QuotaMeterCallback(Settings.from_env())
