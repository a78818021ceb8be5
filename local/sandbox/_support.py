"""Helpers shared by the EPay, Creem and Waffo stand-ins (no provider protocol in here).

- ``Outbox``: every notification a stand-in sent, per stack and order, so tests can replay
  exactly what the provider sent (``GET /_local/sandbox/<name>/notifications/<order_id>``).
- ``deliver``: send one notification with the provider's retry rule (until its reply says
  "received"), over a fresh connection per attempt (the stand-ins run on many threads).
- ``pay_page``: the hosted payment page with Pay / Fail buttons.
"""

from __future__ import annotations

import html
import json
import secrets
import string
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import requests
from werkzeug.routing import Rule
from werkzeug.wrappers import Request, Response

from local.sandbox import SandboxContext, WebhookResult, json_response

RETRY_PAUSE_SECONDS = 0.2  # the real providers wait minutes; a test stack cannot


def random_id(prefix: str, length: int = 20, alphabet: str = "") -> str:
    chars = alphabet or (string.ascii_letters + string.digits)
    return prefix + "".join(secrets.choice(chars) for _ in range(length))


@dataclass
class Notification:
    """One notification exactly as sent: replaying it must reproduce the provider's request."""

    id: str
    order_id: str
    method: str
    url: str
    headers: dict[str, str]
    body: str = ""  # the raw body (UTF-8)
    query: dict[str, str] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return asdict(self)


class Outbox:
    """Notifications per (stack port, order id), in the order they were sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: dict[tuple[int, str], list[Notification]] = {}
        self._by_id: dict[tuple[int, str], Notification] = {}

    def add(self, port: int, notification: Notification) -> None:
        with self._lock:
            self._sent.setdefault((port, notification.order_id), []).append(notification)
            self._by_id[(port, notification.id)] = notification

    def of_order(self, port: int, order_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [n.public() for n in self._sent.get((port, order_id), [])]

    def get(self, port: int, notification_id: str) -> Notification | None:
        with self._lock:
            return self._by_id.get((port, notification_id))

    def listing_rule(self) -> Rule:
        """GET /notifications/<order_id>: what this stand-in sent for an order."""

        def notifications(ctx: SandboxContext, request: Request, order_id: str) -> Response:
            return json_response({"order_id": order_id, "items": self.of_order(ctx.port, order_id)})

        return Rule("/notifications/<order_id>", methods=["GET"], endpoint=notifications)


def send_once(notification: Notification, timeout: float = 30.0) -> WebhookResult:
    data = notification.body.encode("utf-8") if notification.body else None
    try:
        response = requests.request(
            notification.method,
            notification.url,
            params=notification.query or None,
            data=data,
            headers=notification.headers,
            timeout=timeout,
        )
    except requests.RequestException as exc:
        return WebhookResult(0, f"{type(exc).__name__}: {exc}", {})
    return WebhookResult(response.status_code, response.text, dict(response.headers))


def deliver(
    notification: Notification,
    accepted: Callable[[WebhookResult], bool],
    attempts: int,
) -> WebhookResult:
    """Send until `accepted(reply)`, at most `attempts` times; the last reply is returned."""
    result = WebhookResult(0, "", {})
    for attempt in range(attempts):
        if attempt:
            time.sleep(RETRY_PAUSE_SECONDS)
        result = send_once(notification)
        ok = accepted(result)
        notification.attempts.append(
            {"status": result.status, "body": result.body[:500], "accepted": ok}
        )
        if ok:
            break
    return result


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto}}
button{{font-size:1.1rem;padding:.6rem 1.4rem;margin-right:1rem}}</style></head>
<body><h1>{title}</h1>
<p id="description">{description}</p>
<p>Amount: <strong id="amount">{amount}</strong></p>
<p>Status: <span id="status">{status}</span></p>
<form method="post" action="{action}">
<button type="submit" name="outcome" value="paid" id="pay">Pay</button>
<button type="submit" name="outcome" value="failed" id="fail">Fail</button>
</form></body></html>
"""


def pay_page(title: str, description: str, amount: str, status: str, action: str) -> str:
    return _PAGE.format(
        title=html.escape(title),
        description=html.escape(description),
        amount=html.escape(amount),
        status=html.escape(status),
        action=html.escape(action),
    )


def json_object(raw: bytes) -> Mapping[str, Any] | None:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
