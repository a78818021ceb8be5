"""Helpers for the meter client's tests and the LiteLLM integration test.

Accounts are made through the public API (POST /account, then the admin adjust route);
balances, ledgers and usage records are read back through the API (and the usage table for
what the API does not show). `LossyInvokeApi` stands between a client and the local stack's
Invoke API and plays the network and the Lambda service, which the stack cannot: an answer
lost after the function ran (the caller times out), or a throttled invocation (429).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import ROUND_CEILING, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = json.loads((ROOT / "settings" / "local.json").read_text())
ADMIN = "admin-meter-client"


def new_user(prefix: str = "mc") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def funded_user(stack: LocalStack, quota: int, prefix: str = "mc") -> str:
    """A user whose account holds `quota` (credited through the admin adjust route)."""
    user = new_user(prefix)
    created = stack.request("POST", "/account", token=stack.token(user), json={})
    assert created.status_code == 201, created.text
    if quota:
        adjusted = stack.request(
            "POST",
            f"/admin/accounts/{user}/adjust",
            token=stack.token(ADMIN, admin=True),
            json={"delta": quota, "reason": "meter client test"},
        )
        assert adjusted.status_code == 200, adjusted.text
    return user


def account(stack: LocalStack, user: str) -> dict[str, Any]:
    response = stack.request("GET", "/account", token=stack.token(user))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def listing(stack: LocalStack, user: str, path: str) -> list[dict[str, Any]]:
    token = stack.token(user)
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = f"?limit=100&cursor={cursor}" if cursor else "?limit=100"
        page = stack.request("GET", path + query, token=token)
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if not cursor:
            return items


def usage_entries(stack: LocalStack, user: str) -> list[dict[str, Any]]:
    """The user's `usage` ledger entries; also checks that the ledger sums to the balance."""
    entries = listing(stack, user, "/ledger")
    quota = account(stack, user)["quota"]
    assert sum(e["delta"] for e in entries if e["balance"] == "quota") == quota
    return [e for e in entries if e["kind"] == "usage"]


def usage_record(stack: LocalStack, request_id: str) -> dict[str, Any] | None:
    found = stack.boto3_client("dynamodb").get_item(
        TableName=stack.table_name("UsageTable"),
        Key={"request_id": {"S": request_id}},
        ConsistentRead=True,
    )
    item = found.get("Item")
    return None if item is None else {k: next(iter(v.values())) for k, v in item.items()}


def meter_invocations(stack: LocalStack) -> int:
    return int(stack.stats()["invocations"]["MeterUsageFunction"])


def price(model: str, prompt_tokens: int, completion_tokens: int, group: str = "default") -> int:
    """API.md's formula over settings/local.json, written out independently of the domain."""
    pricing = SETTINGS["pricing"]
    group_ratio = Decimal(pricing["group_ratios"][group])
    if model in pricing["model_prices"]:
        raw = Decimal(pricing["model_prices"][model]) * SETTINGS["quota_per_unit"] * group_ratio
    else:
        ratio = Decimal(pricing["model_ratios"][model])
        completion_ratio = Decimal(
            pricing["completion_ratios"].get(model, pricing["default_completion_ratio"])
        )
        raw = (prompt_tokens + completion_tokens * completion_ratio) * ratio * group_ratio
    if raw == 0:
        return 0
    return max(1, int(raw.to_integral_value(rounding=ROUND_CEILING)))


def wait_until(check: Any, timeout: float = 30.0, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(0.1)


class LossyInvokeApi:
    """An HTTP relay to the stack's Invoke API that can lose answers or throttle.

    `lose_answers(n)`: the next n invocations reach the function, which runs to the end,
    but the answer is never sent back (the client's read times out). `throttle(n)`: the
    next n invocations are answered 429 TooManyRequestsException, as Lambda does, without
    reaching the function. `attempts` counts the invocations the relay saw.
    """

    def __init__(self, target: str, hold_seconds: float = 3.0) -> None:
        parts = urlsplit(target)
        self.target_host = parts.hostname or "127.0.0.1"
        self.target_port = parts.port or 80
        self.hold_seconds = hold_seconds
        self.attempts = 0
        self._lose = 0
        self._throttle = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                relay._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def lose_answers(self, count: int) -> None:
        with self._lock:
            self._lose = count

    def throttle(self, count: int) -> None:
        with self._lock:
            self._throttle = count

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        with self._lock:
            self.attempts += 1
            throttled = self._throttle > 0
            self._throttle -= int(throttled)
            lost = not throttled and self._lose > 0
            self._lose -= int(lost)
        if throttled:
            payload = json.dumps(
                {
                    "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
                    "Type": "User",
                    "message": "Rate Exceeded.",
                }
            ).encode()
            request.send_response(429)
            request.send_header("x-amzn-ErrorType", "TooManyRequestsException")
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(payload)))
            request.end_headers()
            request.wfile.write(payload)
            return
        upstream = http.client.HTTPConnection(self.target_host, self.target_port, timeout=120)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        upstream.request("POST", request.path, body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        upstream.close()
        if lost:
            # The function ran; its answer is lost on the way back.
            self._stopping.wait(self.hold_seconds)
            request.close_connection = True
            return
        request.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in (
                "content-length",
                "connection",
                "transfer-encoding",
                "date",
                "server",
            ):
                request.send_header(name, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def __enter__(self) -> LossyInvokeApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def lossy_invoke_api(stack: LocalStack, hold_seconds: float = 3.0) -> Iterator[LossyInvokeApi]:
    with LossyInvokeApi(stack.base_url, hold_seconds) as relay:
        yield relay
