"""The LiteLLM callback's settings (quota_meter.gateway_settings): read from QUOTA_METER_*,
and a bad value is refused when the proxy loads the callback, never guessed at."""

from __future__ import annotations

import pytest
from quota_meter.gateway_settings import DEFAULT_MAX_TOKENS, Settings


def test_defaults_without_any_variable() -> None:
    settings = Settings.from_env({})
    assert settings == Settings(
        function_name="MeterUsageFunction",
        endpoint_url=None,
        model_map={},
        default_max_tokens=DEFAULT_MAX_TOKENS,
        send_key_id=False,
        queue_url=None,
        queue_endpoint_url=None,
    )


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "QUOTA_METER_FUNCTION": "arn:aws:lambda:us-east-1:123456789012:function:meter",
            "QUOTA_METER_ENDPOINT_URL": "http://127.0.0.1:3000",
            "QUOTA_METER_MODEL_MAP": '{"my-gpt": "gpt-4o"}',
            "QUOTA_METER_DEFAULT_MAX_TOKENS": "512",
            "QUOTA_METER_SEND_KEY_ID": "true",
            "QUOTA_METER_QUEUE_URL": "http://127.0.0.1:4566/123456789012/usage",
        }
    )
    assert settings.function_name.endswith(":function:meter")
    assert settings.endpoint_url == "http://127.0.0.1:3000"
    assert dict(settings.model_map) == {"my-gpt": "gpt-4o"}
    assert (settings.default_max_tokens, settings.send_key_id) == (512, True)
    assert settings.queue_url is not None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("QUOTA_METER_MODEL_MAP", "{not json"),
        ("QUOTA_METER_MODEL_MAP", '["gpt-4o"]'),
        ("QUOTA_METER_MODEL_MAP", '{"my-gpt": ""}'),
        ("QUOTA_METER_MODEL_MAP", '{"my-gpt": 4}'),
        ("QUOTA_METER_DEFAULT_MAX_TOKENS", "-1"),
        ("QUOTA_METER_DEFAULT_MAX_TOKENS", "lots"),
        ("QUOTA_METER_DEFAULT_MAX_TOKENS", "1e6"),
        ("QUOTA_METER_SEND_KEY_ID", "maybe"),
    ],
)
def test_a_bad_variable_is_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})
