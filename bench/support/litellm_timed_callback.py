"""quota_meter's LiteLLM callback with its two metering hooks timed, for bench/litellm_latency.py.

The proxy loads it from its config's directory (`callbacks: litellm_timed_callback.callback`,
the file copied next to the config). Each hook's wall time, from entry to return, is appended
as one JSON line to $QUOTA_METER_TIMINGS: the reserve hook (`async_pre_call_hook`, before the
upstream call, on the client's path) and the settle hook (`async_log_success_event`, after the
response). The bench pairs them by request id. The callback itself is the installed one,
unchanged: this only wraps its hooks.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from quota_meter.gateway_settings import Settings
from quota_meter.litellm import METADATA_KEY, QuotaMeterCallback, _metadata

_LOCK = threading.Lock()


def _record(hook: str, request_id: Any, seconds: float) -> None:
    line = json.dumps({"hook": hook, "request_id": request_id, "seconds": seconds})
    with _LOCK, open(os.environ["QUOTA_METER_TIMINGS"], "a", encoding="utf-8") as out:
        out.write(line + "\n")


class TimedCallback(QuotaMeterCallback):
    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> dict[str, Any]:
        started = time.perf_counter()
        result = await super().async_pre_call_hook(user_api_key_dict, cache, data, call_type)
        elapsed = time.perf_counter() - started
        _record("reserve", _metadata(result).get(METADATA_KEY), elapsed)
        return result

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        request_id = _metadata(kwargs).get(METADATA_KEY)
        started = time.perf_counter()
        await super().async_log_success_event(kwargs, response_obj, start_time, end_time)
        _record("settle", request_id, time.perf_counter() - started)


callback = TimedCallback(Settings.from_env())
