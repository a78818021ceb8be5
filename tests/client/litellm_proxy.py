"""A real LiteLLM proxy process (from .venv-litellm, `make litellm-venv`) on 127.0.0.1.

Its models answer with LiteLLM's mock responses (`mock_response` in litellm_params: a text,
or "litellm.InternalServerError" for an upstream that fails), so nothing leaves the machine.
With `metered=True` our callback (quota_meter.litellm.callback, installed into that venv
from clients/python) meters every call against the given local stack.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from tests.support.stack import ARTIFACTS, LocalStack, free_port

CALLBACK = "quota_meter.litellm.callback"

ROOT = Path(__file__).resolve().parents[2]
LITELLM = ROOT / ".venv-litellm" / "bin" / "litellm"
MASTER_KEY = "sk-local-test-master-key"


def mock_model(name: str, reply: str, upstream: str = "openai/gpt-4o") -> dict[str, Any]:
    return {
        "model_name": name,
        "litellm_params": {"model": upstream, "api_key": "unused", "mock_response": reply},
    }


class LiteLLMProxy:
    def __init__(
        self,
        name: str,
        stack: LocalStack,
        models: Sequence[Mapping[str, Any]],
        *,
        metered: bool = True,
        model_map: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        endpoint_url: str | None = None,
        callback_file: Path | None = None,
    ) -> None:
        if not LITELLM.exists():
            raise RuntimeError(f"{LITELLM} is missing: run `make litellm-venv` first")
        self.name = name
        self.stack = stack
        self.models = list(models)
        self.metered = metered
        self.model_map = dict(model_map or {})
        self.extra_env = dict(env or {})
        self.endpoint_url = endpoint_url or stack.base_url  # the Invoke API the callback uses
        # Another callback module (its `callback`), which the proxy loads from its config's
        # directory: a copy of the file goes next to the config.
        self.callback_file = callback_file
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = ARTIFACTS / f"litellm-{name}-{os.getpid()}.log"
        self.config_path = ARTIFACTS / f"litellm-{name}-{os.getpid()}.json"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> LiteLLMProxy:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {"model_list": self.models}
        if self.metered:
            callback = CALLBACK
            if self.callback_file is not None:
                module = f"{self.callback_file.stem}_{self.name}_{os.getpid()}".replace("-", "_")
                (ARTIFACTS / f"{module}.py").write_text(self.callback_file.read_text())
                callback = f"{module}.callback"
            config["litellm_settings"] = {"callbacks": callback}
        # JSON is YAML: the proxy reads this file as its config.yaml.
        self.config_path.write_text(json.dumps(config, indent=2))
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(
            {
                "LITELLM_MASTER_KEY": MASTER_KEY,
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # offline: no cost map download
                "QUOTA_METER_FUNCTION": "MeterUsageFunction",
                "QUOTA_METER_ENDPOINT_URL": self.endpoint_url,
                "QUOTA_METER_MODEL_MAP": json.dumps(self.model_map),
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "PYTHONUNBUFFERED": "1",
                **self.extra_env,
            }
        )
        command = [str(LITELLM), "--config", str(self.config_path)]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ARTIFACTS,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the LiteLLM proxy exited\n{self.log_tail()}")
            try:
                if requests.get(f"{self.base_url}/health/liveliness", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"the LiteLLM proxy was not up within {timeout:.0f} s\n{self.log_tail()}"
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        except ProcessLookupError:
            pass

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "--- LiteLLM proxy log (tail) ---\n" + "\n".join(
            self.log_text().splitlines()[-lines:]
        )

    def __enter__(self) -> LiteLLMProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
