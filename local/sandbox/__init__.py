"""Provider stand-ins ("the sandbox"), mounted at ``/_local/sandbox/``.

Each payment provider is played by one module, ``local/sandbox/<provider>.py``. The stack
imports every module of this package at start (and the modules named in the environment
variable ``LOCAL_SANDBOX_PLUGINS``, comma-separated, e.g. for test fixtures); a module
registers its provider when imported::

    from werkzeug.routing import Rule
    from werkzeug.wrappers import Request, Response

    from local.sandbox import SandboxContext, SandboxProvider, json_response, register


    def create_session(ctx: SandboxContext, request: Request) -> Response:
        body = request.get_json()
        order_id = body["request_id"]
        ctx.store.put(order_id, "creem", {"amount": body["amount"], "status": "open"})
        return json_response({"checkout_url": ctx.url(f"/_local/sandbox/creem/pay/{order_id}")})


    def pay(ctx: SandboxContext, order_id: str, outcome: str) -> dict[str, object]:
        session = ctx.store.get(order_id)
        raw = b'{"eventType": "checkout.completed", ...}'
        result = ctx.post_webhook("/webhooks/creem", raw, {"creem-signature": "..."})
        ctx.store.update(order_id, status=outcome)
        return {"order_id": order_id, "outcome": outcome, "webhook_status": result.status}


    register(SandboxProvider(
        name="creem",
        rules=[Rule("/v1/checkouts", methods=["POST"], endpoint=create_session)],
        pay=pay,
    ))

Rules are werkzeug rules relative to ``/_local/sandbox/<name>``; a rule's endpoint is a
callable ``(ctx, request, **url_values)`` returning a werkzeug Response (or a dict, sent as
JSON with status 200, or a ``(dict, status)`` tuple). Point the domain's API client at the
provider with the ``*_API_BASE`` variables (the stack's defaults are
``http://127.0.0.1:<PORT>/_local/sandbox/<name>``).

``pay(ctx, order_id, outcome)`` completes a session as a paying user would (``outcome`` is
``"paid"`` or ``"failed"``), typically by sending the provider's signed webhook to our API
with :meth:`SandboxContext.post_webhook`; ``POST /_local/sandbox/pay/{order_id}`` finds the
provider that stored the order's session in :class:`SandboxStore` and calls it.

The stand-ins sign and verify as each provider documents it (see PROVIDERS.md), never by
importing the domain (``billing``): a bug in our verifier must not hide behind the same bug
in the sandbox. ``ctx.credentials`` holds the provider credentials the stack put into the
secrets (environment over dev defaults); ``ctx.waffo`` holds the Waffo platform's private key
(to sign webhooks) and the merchant's public key (to verify our requests).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pkgutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule, RuleFactory, Submount
from werkzeug.wrappers import Request, Response

log = logging.getLogger("local.sandbox")

OUTCOMES = ("paid", "failed")

Handler = Callable[..., Any]


@dataclass(frozen=True)
class WaffoSandboxKeys:
    platform_private_pem: str | None  # signs webhooks and responses as Waffo
    platform_public_pem: str
    merchant_public_pem: str  # verifies requests our backend signs


@dataclass(frozen=True)
class WebhookResult:
    status: int
    body: str
    headers: dict[str, str]


@dataclass
class SandboxSession:
    order_id: str
    provider: str
    data: dict[str, Any]


class SandboxStore:
    """In-memory sessions of every provider: order id -> (provider, session data)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, SandboxSession] = {}

    def put(self, order_id: str, provider: str, data: Mapping[str, Any]) -> None:
        with self._lock:
            self._sessions[order_id] = SandboxSession(order_id, provider, dict(data))

    def get(self, order_id: str) -> SandboxSession | None:
        with self._lock:
            session = self._sessions.get(order_id)
            return (
                None
                if session is None
                else SandboxSession(session.order_id, session.provider, dict(session.data))
            )

    def update(self, order_id: str, **changes: Any) -> SandboxSession:
        with self._lock:
            session = self._sessions[order_id]
            session.data.update(changes)
            return SandboxSession(session.order_id, session.provider, dict(session.data))

    def find(self, provider: str, key: str, value: Any) -> SandboxSession | None:
        """The session of a provider whose data[key] == value (e.g. a provider session id)."""
        with self._lock:
            for session in self._sessions.values():
                if session.provider == provider and session.data.get(key) == value:
                    return SandboxSession(session.order_id, session.provider, dict(session.data))
        return None

    def all(self) -> list[SandboxSession]:
        with self._lock:
            return [
                SandboxSession(s.order_id, s.provider, dict(s.data))
                for s in self._sessions.values()
            ]


@dataclass
class SandboxContext:
    """What a provider stand-in needs from the stack."""

    port: int
    store: SandboxStore
    credentials: dict[str, str]
    waffo: WaffoSandboxKeys
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def http(self) -> requests.Session:
        """A requests session per thread (sandbox handlers run on many threads)."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def post_webhook(
        self,
        path: str,
        body: bytes | str,
        headers: Mapping[str, str] | None = None,
        *,
        method: str = "POST",
        params: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> WebhookResult:
        """Send a request to the local API (our webhook routes) with this exact raw body."""
        raw = body.encode() if isinstance(body, str) else body
        response = self.http.request(
            method,
            self.url(path),
            data=raw if raw else None,
            headers=dict(headers or {}),
            params=dict(params or {}),
            timeout=timeout,
        )
        return WebhookResult(response.status_code, response.text, dict(response.headers))


@dataclass(frozen=True)
class SandboxProvider:
    name: str
    rules: list[RuleFactory]
    pay: Callable[[SandboxContext, str, str], dict[str, Any]]


_REGISTRY: dict[str, SandboxProvider] = {}
_RESERVED = {"pay"}


def register(provider: SandboxProvider) -> SandboxProvider:
    if provider.name in _RESERVED or "/" in provider.name:
        raise ValueError(f"sandbox provider name {provider.name!r} is reserved or invalid")
    if provider.name in _REGISTRY and _REGISTRY[provider.name] is not provider:
        raise ValueError(f"sandbox provider {provider.name!r} is registered twice")
    _REGISTRY[provider.name] = provider
    return provider


def providers() -> dict[str, SandboxProvider]:
    return dict(_REGISTRY)


def load_providers(extra_modules: list[str] | None = None) -> list[str]:
    """Import every provider module; returns the names of modules that failed."""
    failed: list[str] = []
    names = [
        f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")
    ]
    if extra_modules is None:
        extra_modules = [
            m.strip() for m in os.environ.get("LOCAL_SANDBOX_PLUGINS", "").split(",") if m.strip()
        ]
    for module in [*names, *extra_modules]:
        try:
            importlib.import_module(module)
        except Exception:
            log.exception("sandbox module %s failed to load; its provider is not available", module)
            failed.append(module)
    return failed


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status)


class Sandbox:
    """Dispatches ``/_local/sandbox/...`` to the registered providers."""

    PREFIX = "/_local/sandbox"

    def __init__(self, context: SandboxContext) -> None:
        self.context = context
        self.providers = providers()
        self.url_map = Map(
            [
                Rule(f"{self.PREFIX}/pay/<order_id>", methods=["POST"], endpoint="pay"),
                Rule(f"{self.PREFIX}", methods=["GET"], endpoint="index"),
                *(
                    Submount(f"{self.PREFIX}/{name}", provider.rules)
                    for name, provider in self.providers.items()
                ),
            ],
            strict_slashes=False,
        )

    def dispatch(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, values = adapter.match()
        except NotFound:
            return _error(404, "not_found", f"no sandbox route for {request.path}")
        except HTTPException as exc:
            response = exc.get_response(request.environ)
            return Response(
                response.get_data(),
                status=response.status_code,
                headers=list(response.headers.items()),
            )
        if endpoint == "pay":
            return self._pay(request, str(values["order_id"]))
        if endpoint == "index":
            return json_response(
                {
                    "providers": sorted(self.providers),
                    "sessions": [
                        {"order_id": s.order_id, "provider": s.provider}
                        for s in self.context.store.all()
                    ],
                }
            )
        try:
            result = endpoint(self.context, request, **values)
        except Exception as exc:
            log.exception("sandbox handler for %s failed", request.path)
            return _error(500, "sandbox_error", f"{type(exc).__name__}: {exc}")
        return _to_response(result)

    def _pay(self, request: Request, order_id: str) -> Response:
        body: Any = {}
        if request.get_data():
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                return _error(400, "invalid_request", "the body must be a JSON object")
        outcome = body.get("outcome", "paid")
        if outcome not in OUTCOMES:
            return _error(400, "invalid_request", f"outcome must be one of {OUTCOMES}")
        session = self.context.store.get(order_id)
        if session is None:
            return _error(404, "not_found", f"no sandbox session for order {order_id}")
        provider = self.providers.get(session.provider)
        if provider is None:
            return _error(404, "not_found", f"provider {session.provider} is not loaded")
        try:
            result = provider.pay(self.context, order_id, outcome)
        except Exception as exc:
            log.exception("sandbox pay for %s failed", order_id)
            return _error(500, "sandbox_error", f"{type(exc).__name__}: {exc}")
        return json_response(result)


def _to_response(result: Any) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, tuple):
        payload, status = result
        return json_response(payload, int(status))
    return json_response(result)
