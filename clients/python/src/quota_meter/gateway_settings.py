"""The LiteLLM callback's settings, from the environment (QUOTA_METER_*), checked at load:
a bad value stops the proxy at start instead of failing (or under-billing) calls later."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from quota_meter.events import MAX_NAME, MAX_TOKENS
from quota_meter.meter import DEFAULT_FUNCTION

DEFAULT_MAX_TOKENS = 4096


@dataclass(frozen=True)
class Settings:
    function_name: str = DEFAULT_FUNCTION
    endpoint_url: str | None = None
    model_map: Mapping[str, str] = field(default_factory=dict)
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    send_key_id: bool = False
    queue_url: str | None = None
    queue_endpoint_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        raw_map = env.get("QUOTA_METER_MODEL_MAP") or "{}"
        try:
            model_map = json.loads(raw_map)
        except ValueError as exc:
            raise ValueError(f"QUOTA_METER_MODEL_MAP is not JSON: {exc}") from None
        if not isinstance(model_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and 0 < len(v) <= MAX_NAME
            for k, v in model_map.items()
        ):
            raise ValueError("QUOTA_METER_MODEL_MAP must be a JSON object of model names")
        raw_max = env.get("QUOTA_METER_DEFAULT_MAX_TOKENS") or str(DEFAULT_MAX_TOKENS)
        if not raw_max.isascii() or not raw_max.isdecimal() or int(raw_max) > MAX_TOKENS:
            raise ValueError("QUOTA_METER_DEFAULT_MAX_TOKENS must be a whole number of tokens")
        switch = (env.get("QUOTA_METER_SEND_KEY_ID") or "false").lower()
        if switch not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError("QUOTA_METER_SEND_KEY_ID must be true or false")
        return cls(
            function_name=env.get("QUOTA_METER_FUNCTION") or DEFAULT_FUNCTION,
            endpoint_url=env.get("QUOTA_METER_ENDPOINT_URL") or None,
            model_map=model_map,
            default_max_tokens=int(raw_max),
            send_key_id=switch in ("1", "true", "yes"),
            queue_url=env.get("QUOTA_METER_QUEUE_URL") or None,
            queue_endpoint_url=env.get("QUOTA_METER_QUEUE_ENDPOINT_URL") or None,
        )
