"""Runs the local stack (``python -m local``) as a subprocess for tests.

stack = LocalStack().start()                     # infra/template.yaml
stack.request("GET", "/account", token=stack.token("user-1"))
stack.invoke("MeterUsageFunction", {...})        # Lambda Invoke API through boto3
stack.boto3_client("dynamodb")                   # the embedded AWS (moto)
stack.stop()                                     # fails on an unexpected IAM AccessDenied

Every stack checks, when it stops, that IAM refused none of its functions' calls (the stack
enforces infra/template.yaml's policies as AWS does: a refusal here is a refusal in AWS). A test
that refuses calls on purpose names the functions it refuses:
LocalStack("iam", expect_access_denied={"ProbeFunction"}); a refusal of any other function still
fails the test that owns the stack.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import boto3
import requests
import yaml
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
DEFAULT_TEMPLATE = ROOT / "infra" / "template.yaml"

T = TypeVar("T")

# AWS's waits at 1/100; no worker started before its function is first invoked (a test's
# stack uses a few of the functions, and the machine's cores are better spent on the tests).
FAST = {"LOCAL_TIME_SCALE": "0.01", "LOCAL_PREWARM": "0"}

# local/iam/enforcer.py logs one line per refusal.
DENIAL_LINE = re.compile(
    r"IAM AccessDenied: (?P<function>\S+) may not (?P<action>\S+) on (?P<rest>.*)"
)


class StackStartError(RuntimeError):
    pass


class LambdaFunctionError(Exception):
    """An invocation returned a function error (X-Amz-Function-Error)."""

    def __init__(self, function: str, kind: str, payload: Any) -> None:
        message = payload.get("errorMessage") if isinstance(payload, dict) else payload
        super().__init__(f"{function} failed ({kind}): {message}")
        self.function = function
        self.kind = kind
        self.payload = payload

    @property
    def error_type(self) -> str | None:
        return self.payload.get("errorType") if isinstance(self.payload, dict) else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalStack:
    def __init__(self, name: str = "stack", *, expect_access_denied: Collection[str] = ()) -> None:
        """`expect_access_denied`: the logical ids of the functions whose calls the test has
        IAM refuse on purpose; a refusal of any other function fails stop()."""
        self.name = name
        self.expect_access_denied = frozenset(expect_access_denied)
        self._healthy = False
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        # One file per test process: several test runs may share the checkout.
        self.log_path = ARTIFACTS / f"local-stack-{name}-{os.getpid()}.log"
        self._health: dict[str, Any] = {}
        self._local = threading.local()

    @property
    def http(self) -> requests.Session:
        """A session per thread (tests fire concurrent requests from thread pools)."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    # ------------------------------------------------------------ lifecycle

    def start(
        self,
        template: str | Path = DEFAULT_TEMPLATE,
        env: Mapping[str, str] | None = None,
        *,
        settings: str | Path | None = None,
        parameters: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> LocalStack:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        _remove_stale_logs(self.name)
        _build_lambda_runtime(Path(template))
        self.port = free_port()
        command = [
            sys.executable,
            "-m",
            "local",
            "--port",
            str(self.port),
            "--template",
            str(Path(template).resolve()),
        ]
        if settings is not None:
            command += ["--settings", str(Path(settings).resolve())]
        for key, value in (parameters or {}).items():
            command += ["--parameter", f"{key}={value}"]
        # Fast mode (FAST), unless the caller's environment says otherwise; every strictness
        # stays on.
        environment = {**FAST, **os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        environment.pop("PORT", None)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() takes the workers too
            )
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise StackStartError(
                    f"the local stack exited with {self.process.returncode}\n{self.log_tail()}"
                )
            try:
                response = self.http.get(f"{self.base_url}/_local/health", timeout=2)
                if response.status_code == 200:
                    self._health = response.json()
                    self._healthy = True
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop(check=False)
        raise StackStartError(
            f"the local stack was not healthy within {timeout:.0f} s\n{self.log_tail()}"
        )

    def stop(self, check: bool = True) -> None:
        """Stop the stack; then (`check`) fail with AssertionError if IAM refused a call of a
        function the owner did not name in `expect_access_denied`, or if a handler answered
        with a body its response model does not describe (billing.http.checked sends it all
        the same, as in AWS, and counts ResponseSchemaMismatch)."""
        process, self.process = self.process, None
        if process is None:
            return
        problems = (
            self.access_denied_problems() + self.response_model_problems()
            if check and self._healthy
            else []
        )
        self._healthy = False
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
            except ProcessLookupError:
                pass
        assert not problems, "\n\n".join(problems)

    def response_model_problems(self) -> list[str]:
        """Answers unlike their response model, from the functions' metrics; [] if none."""
        try:
            mismatches = self.metric_sum("ResponseSchemaMismatch")
        except requests.RequestException:
            mismatches = 0  # the stack died: the log still names them
        lines = [
            line
            for line in self.log_text().splitlines()
            if "response body does not match its model" in line
        ]
        if not mismatches and not lines:
            return []
        return [
            f"{int(mismatches) or len(lines)} answers did not match their response model "
            "(billing.api_models; fix the handler or the model):\n" + "\n".join(lines[:20])
        ]

    def access_denied_problems(self) -> list[str]:
        """IAM refusals of functions not in `expect_access_denied`, from GET /_local/iam (and
        from the log, which also holds them once the stack is gone); [] if none."""
        refused: dict[str, int] = {}
        lines: list[str] = []
        try:
            report = self.iam()
        except requests.RequestException:
            report = None  # the stack died: its log still says what was refused
        if report is not None:
            if not report.get("enforced"):
                return [f"the {self.name} stack does not enforce IAM"]
            for function, calls in report["functions"].items():
                if calls["denied_calls"] and function not in self.expect_access_denied:
                    refused[function] = int(calls["denied_calls"])
            lines = [
                f"{d['time']} {d['function']}: {d['action']} on {d['resource']} ({d['operation']})"
                for d in report["denials"]
                if d["function"] not in self.expect_access_denied
            ]
        logged = [
            match
            for match in map(DENIAL_LINE.search, self.log_text().splitlines())
            if match is not None and match["function"] not in self.expect_access_denied
        ]
        if not lines:
            lines = [match.group(0) for match in logged]
        for match in logged:
            refused.setdefault(match["function"], 1)  # in the log only: at least one
        if not refused:
            return []
        counts = ", ".join(f"{function} {n}" for function, n in sorted(refused.items()))
        return [
            f"IAM refused calls of the {self.name} stack's functions ({counts}): grant what "
            "the code needs in infra/template.yaml (least privilege), or name a function the "
            "test refuses on purpose in LocalStack(expect_access_denied=...)\n"
            + "\n".join(lines[:50])
        ]

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_text().splitlines()[-lines:]
        return "--- local stack log (tail) ---\n" + "\n".join(text)

    # ------------------------------------------------------------ addresses

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def aws_endpoint(self) -> str:
        return str(self._health["aws_endpoint"])

    def health(self) -> dict[str, Any]:
        response = self.http.get(f"{self.base_url}/_local/health", timeout=10)
        response.raise_for_status()
        self._health = response.json()
        return self._health

    @property
    def index_lag(self) -> float:
        """Seconds a write stays invisible to indexes and eventually consistent reads."""
        return float(self._health.get("strict", {}).get("index_lag_ms", 0)) / 1000

    def table_name(self, logical_id: str) -> str:
        return str(self._health["tables"][logical_id])

    def queue_url(self, logical_id: str) -> str:
        return str(self._health["queues"][logical_id])

    # ------------------------------------------------------------ HTTP API

    def token(self, sub: str, admin: bool = False, **extra: Any) -> str:
        """A dev JWT; extra: email, expires_in (seconds, may be negative), claims (dict)."""
        response = self.http.post(
            f"{self.base_url}/_local/token", json={"sub": sub, "admin": admin, **extra}, timeout=10
        )
        response.raise_for_status()
        return str(response.json()["token"])

    def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        timeout: float = 60.0,
        **kwargs: Any,
    ) -> requests.Response:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        return self.http.request(
            method,
            self.base_url + path,
            json=json,
            data=data,
            headers=all_headers,
            timeout=timeout,
            **kwargs,
        )

    # ------------------------------------------------------------ Lambda and AWS

    def lambda_client(self) -> Any:
        return boto3.client(
            "lambda",
            endpoint_url=self.base_url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
            config=Config(retries={"total_max_attempts": 1}, read_timeout=120),
        )

    def invoke_raw(
        self, function: str, payload: Any, invocation_type: str = "RequestResponse"
    ) -> dict[str, Any]:
        response: dict[str, Any] = self.lambda_client().invoke(
            FunctionName=function,
            InvocationType=invocation_type,
            Payload=json.dumps(payload).encode(),
        )
        return response

    def invoke(self, function: str, payload: Any) -> Any:
        """The function's parsed result; LambdaFunctionError on a function error."""
        response = self.invoke_raw(function, payload)
        body = response["Payload"].read()
        result = json.loads(body) if body else None
        if response.get("FunctionError"):
            raise LambdaFunctionError(function, response["FunctionError"], result)
        return result

    def boto3_client(self, service: str, **config: Any) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.aws_endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(**config) if config else None,
        )

    # ------------------------------------------------------------ control endpoints

    def fault(self, **spec: Any) -> dict[str, Any]:
        """Inject an AWS fault (service, operation, error_code, after, count, ...) or a
        poller fault (poller=FunctionLogicalId, die_after_invoke=N)."""
        response = self.http.post(f"{self.base_url}/_local/faults", json=spec, timeout=10)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def faults(self) -> dict[str, Any]:
        """GET /_local/faults: the AWS faults in place (each with its `seen` and `fired`
        counts) and the pollers' faults."""
        response = self.http.get(f"{self.base_url}/_local/faults", timeout=10)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def clear_faults(self) -> None:
        self.http.post(
            f"{self.base_url}/_local/faults", json={"clear": True}, timeout=10
        ).raise_for_status()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.http.get(f"{self.base_url}/_local/stats", timeout=10).json()
        return result

    def reset_stats(self) -> None:
        self.http.post(f"{self.base_url}/_local/stats/reset", timeout=10).raise_for_status()

    def iam(self) -> dict[str, Any]:
        """GET /_local/iam: every IAM refusal and the allowed calls per function."""
        response = self.http.get(f"{self.base_url}/_local/iam", timeout=10)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def events(
        self,
        type: str | None = None,
        source: str | None = None,
        bus: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """GET /_local/events: what was put on the event buses, newest first; each item is
        {"bus", "event" (as a rule's target gets it), "rules" (those it matched), "recorded"}."""
        query = {"type": type, "source": source, "bus": bus, "limit": limit}
        response = self.http.get(
            f"{self.base_url}/_local/events",
            params={k: v for k, v in query.items() if v is not None},
            timeout=10,
        )
        response.raise_for_status()
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    def metrics(self, name: str | None = None) -> list[dict[str, Any]]:
        """GET /_local/metrics: the functions' EMF metrics summed per name and dimensions;
        each item is {"namespace", "name", "dimensions", "unit", "sum", "count"}."""
        params = {"name": name} if name else {}
        response = self.http.get(f"{self.base_url}/_local/metrics", params=params, timeout=10)
        response.raise_for_status()
        rows: list[dict[str, Any]] = response.json()["metrics"]
        return rows

    def metric_sum(self, name: str, **dimensions: str) -> float:
        """The sum of a metric over the series whose dimensions include these."""
        return sum(
            row["sum"]
            for row in self.metrics(name)
            if all(row["dimensions"].get(k) == v for k, v in dimensions.items())
        )

    def clear_events(self) -> None:
        self.http.delete(f"{self.base_url}/_local/events", timeout=10).raise_for_status()

    def run_schedule(self, function: str, event: str) -> requests.Response:
        return self.http.post(f"{self.base_url}/_local/schedules/{function}/{event}", timeout=120)

    def advance_clock(self, seconds: int) -> dict[str, Any]:
        """Move the stack's billing clock forward (POST /_local/clock); the schedules that
        came due have run when this returns."""
        response = self.http.post(
            f"{self.base_url}/_local/clock", json={"advance_seconds": seconds}, timeout=300
        )
        response.raise_for_status()
        moved: dict[str, Any] = response.json()
        return moved

    def clock_now(self) -> str:
        return str(self.http.get(f"{self.base_url}/_local/clock", timeout=30).json()["now"])

    def billing_now(self) -> datetime:
        """The stack's billing clock (it may be ahead of real time: POST /_local/clock). Tests
        that send future times (expiries) compute them from this, not from the real clock."""
        return datetime.fromisoformat(self.clock_now().replace("Z", "+00:00"))

    def pay(self, order_id: str, outcome: str = "paid") -> requests.Response:
        return self.http.post(
            f"{self.base_url}/_local/sandbox/pay/{order_id}", json={"outcome": outcome}, timeout=60
        )


def template_copy(
    name: str, edit: Callable[[dict[str, Any]], None], template: Path = DEFAULT_TEMPLATE
) -> Path:
    """A copy of a template changed by ``edit`` (which gets the parsed document, intrinsics in
    their long form), under tests/artifacts/, with its code paths made absolute so that it
    runs like the original."""
    from local.template import load_yaml

    document = load_yaml(template)
    edit(document)
    for body in [*document["Resources"].values(), *(document.get("Globals") or {}).values()]:
        properties = body.get("Properties", body) if isinstance(body, dict) else {}
        for key in ("CodeUri", "ContentUri"):
            if isinstance(properties.get(key), str):
                properties[key] = str((template.parent / properties[key]).resolve())
    target = ARTIFACTS / f"{name}-{os.getpid()}" / "template.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return target


def _build_lambda_runtime(template: Path) -> None:
    """The functions' runtime and layer dependencies (cached; a first build takes a minute,
    longer than a stack's start may)."""
    from local.python_runtime import main as build

    if build(["--template", str(template.resolve())]) != 0:
        raise StackStartError("the Lambda runtime could not be built (see above)")


def _remove_stale_logs(name: str) -> None:
    """Drop logs of earlier runs of this stack name whose test process is gone."""
    for path in ARTIFACTS.glob(f"local-stack-{name}-*.log"):
        pid = path.stem.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            pass


def wait_for(
    check: Callable[[], T | None],
    timeout: float = 20.0,
    interval: float = 0.2,
    message: str = "condition",
) -> T:
    """Poll until check() returns something truthy; its value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)
