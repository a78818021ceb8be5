"""The embedded AWS: moto's server on 127.0.0.1, behind a wrapper that serializes requests,
injects faults and counts calls.

moto's backends are not safe under concurrent requests (a conditional write can interleave
with another one), so every request runs under one global lock. Real DynamoDB is
linearizable per item, so this keeps the emulation honest, while races in our own code are
still exercised: requests interleave between calls. SQS long polls are emulated outside the
lock (moto would otherwise hold it for up to 20 s).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from local import fast_dynamodb
from local.dynamodb_rules import DynamoRules
from local.dynamodb_streams import DynamoStreams
from local.strictness import Strictness

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from werkzeug.serving import BaseWSGIServer

log = logging.getLogger("local.aws")

# The stack's own clients (provisioning, pollers) tag their requests with this user agent
# so that their calls are counted apart and faults do not hit them by accident.
INTERNAL_USER_AGENT = "quota-local-stack"

_THROTTLING_CODES = {
    "ThrottlingException",
    "Throttling",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "LimitExceededException",
    "TransactionConflictException",
    "RequestThrottled",
}
_SERVER_CODES = {"InternalServerError": 500, "InternalFailure": 500, "ServiceUnavailable": 503}

# The JSON protocol's error type prefix per service, as botocore expects it.
_ERROR_NAMESPACES = {
    "dynamodb": "com.amazonaws.dynamodb.v20120810#",
    "sqs": "com.amazonaws.sqs#",
    "ssm": "",
    "secretsmanager": "",
    "dynamodbstreams": "com.amazonaws.dynamodb.v20120810#",
    "events": "",
}

_TARGET_SERVICES = {
    "dynamodb": "dynamodb",
    "dynamodbstreams": "dynamodbstreams",
    "amazonsqs": "sqs",
    "amazonssm": "ssm",
    "secretsmanager": "secretsmanager",
    "awsevents": "events",
}

_SQS_WRITES = {
    "SendMessage",
    "SendMessageBatch",
    "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch",
}
# How often an idle long poll asks moto again for messages that no write announced.
IDLE_RECEIVE_RECHECK = 0.25


@dataclass
class Fault:
    """One injected AWS error: the (after+1)th..(after+count)th matching call fails."""

    service: str
    operation: str
    error_code: str
    after: int = 0
    count: int = 1  # -1 = every matching call from then on
    message: str = "Injected by the local stack"
    status: int | None = None
    contains: str | None = None  # only calls whose body contains this text
    internal: bool = False  # also hit the stack's own calls (pollers, provisioning)
    after_commit: bool = False  # the call takes effect, then its caller gets the error
    seen: int = 0
    fired: int = 0

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> Fault:
        known = {
            "service",
            "operation",
            "error_code",
            "after",
            "count",
            "message",
            "status",
            "contains",
            "internal",
            "after_commit",
        }
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        for name in ("service", "operation", "error_code"):
            if not isinstance(spec.get(name), str) or not spec[name]:
                raise ValueError(f"fault needs a non-empty string {name!r}")
        fault = cls(
            service=spec["service"].lower(),
            operation=spec["operation"],
            error_code=spec["error_code"],
            after=int(spec.get("after", 0)),
            count=int(spec.get("count", 1)),
            message=str(spec.get("message", cls.message)),
            status=None if spec.get("status") is None else int(spec["status"]),
            contains=spec.get("contains"),
            internal=bool(spec.get("internal", False)),
            after_commit=bool(spec.get("after_commit", False)),
        )
        if fault.after < 0 or fault.count == 0 or fault.count < -1:
            raise ValueError("after must be >= 0 and count >= 1 (or -1 for always)")
        return fault

    @property
    def exhausted(self) -> bool:
        return self.count != -1 and self.fired >= self.count

    @property
    def http_status(self) -> int:
        if self.status is not None:
            return self.status
        if self.error_code in _SERVER_CODES:
            return _SERVER_CODES[self.error_code]
        return 400

    def describe(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CallInfo:
    service: str
    operation: str
    internal: bool
    body: bytes
    json_protocol: bool


@dataclass
class Registry:
    """Faults and call counters, shared by the wrapper and the control endpoints."""

    faults: list[Fault] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    internal_calls: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def list(self) -> list[dict[str, Any]]:
        with self.lock:
            return [f.describe() for f in self.faults]

    def record(self, call: CallInfo) -> Fault | None:
        key = f"{call.service}.{call.operation}"
        with self.lock:
            (self.internal_calls if call.internal else self.calls)[key] += 1
            for fault in self.faults:
                if fault.exhausted:
                    continue
                if fault.service != call.service.lower():
                    continue
                if fault.operation not in ("*", call.operation):
                    continue
                if call.internal and not fault.internal:
                    continue
                if fault.contains and fault.contains.encode() not in call.body:
                    continue
                fault.seen += 1
                if fault.seen <= fault.after:
                    continue
                fault.fired += 1
                self.injected[key] += 1
                return fault
        return None

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "calls": dict(sorted(self.calls.items())),
                "internal_calls": dict(sorted(self.internal_calls.items())),
                "injected_faults": dict(sorted(self.injected.items())),
                "total": sum(self.calls.values()),
            }

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.internal_calls.clear()
            self.injected.clear()


def identify(environ: WSGIEnvironment, body: bytes) -> CallInfo:
    """Service and operation of a request (JSON protocol target, else query Action)."""
    user_agent = str(environ.get("HTTP_USER_AGENT", ""))
    internal = INTERNAL_USER_AGENT in user_agent
    target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
    if target and "." in target:
        prefix, _, operation = target.rpartition(".")
        service_key = prefix.split("_")[0].lower()
        service = _TARGET_SERVICES.get(service_key, service_key)
        return CallInfo(service, operation, internal, body, json_protocol=True)
    service = "unknown"
    auth = str(environ.get("HTTP_AUTHORIZATION", ""))
    if "Credential=" in auth:
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        if len(scope) >= 4:
            service = scope[3].lower()
    params = parse_qs(str(environ.get("QUERY_STRING", "")))
    if str(environ.get("CONTENT_TYPE", "")).startswith("application/x-www-form-urlencoded"):
        params.update(parse_qs(body.decode("utf-8", "replace")))
    operation = params.get("Action", [str(environ.get("REQUEST_METHOD", "?"))])[0]
    return CallInfo(service, operation, internal, body, json_protocol=False)


def _error_response(call: CallInfo, fault: Fault) -> tuple[int, list[tuple[str, str]], bytes]:
    if call.json_protocol:
        namespace = _ERROR_NAMESPACES.get(call.service, "")
        payload = {"__type": f"{namespace}{fault.error_code}", "message": fault.message}
        headers = [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("x-amzn-RequestId", "local-fault"),
        ]
        if call.service == "sqs":
            sender = "Receiver" if fault.http_status >= 500 else "Sender"
            headers.append(("x-amzn-query-error", f"{fault.error_code};{sender}"))
        return fault.http_status, headers, json.dumps(payload).encode()
    xml = (
        "<ErrorResponse><Error><Type>Sender</Type>"
        f"<Code>{fault.error_code}</Code><Message>{fault.message}</Message>"
        "</Error><RequestId>local-fault</RequestId></ErrorResponse>"
    )
    return fault.http_status, [("Content-Type", "text/xml")], xml.encode()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

# Decides whether a request may reach moto: None, or the error response to send instead
# (local/iam: a function's request outside its policies gets the service's AccessDenied).
ErrorResponse = tuple[int, list[tuple[str, str]], bytes]
Authorizer = Callable[["WSGIEnvironment", CallInfo], ErrorResponse | None]
# Sees each answered request (status line, body), e.g. EventBridge's PutEvents.
Observer = Callable[[CallInfo, str, bytes], None]


class SerializedApp:
    """WSGI wrapper: one request at a time into moto, plus faults, counters and long polls."""

    def __init__(self, app: WSGIApplication, registry: Registry) -> None:
        self.app = app
        self.registry = registry
        self.lock = threading.Lock()
        self._sqs_activity = threading.Condition()
        self._closing = False
        self.default_receive_wait: dict[str, int] = {}
        self.authorizer: Authorizer | None = None
        self.dynamodb: DynamoRules | None = None  # AWS's strictness (local/dynamodb_rules.py)
        self.streams: DynamoStreams | None = None  # DynamoDB Streams (local/dynamodb_streams.py)
        self.observers: list[Observer] = []

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        call = identify(environ, body)
        # IAM first, as in AWS: a refused request is neither counted nor hit by faults.
        refused = self.authorizer(environ, call) if self.authorizer is not None else None
        if refused is not None:
            status, headers, payload = refused
            headers = [*headers, ("Content-Length", str(len(payload)))]
            start_response(f"{status} {_REASONS.get(status, 'Error')}", headers)
            return [payload]
        fault = self.registry.record(call)
        if fault is not None:
            if fault.after_commit:
                # Done, but the answer is lost: what watches the call (stream records, the
                # buses' events) sees it take effect, as in AWS.
                done_line, _, done_payload = self._execute(call, environ, body)
                self._notify(call, done_line, done_payload)
            status, headers, payload = _error_response(call, fault)
            headers.append(("Content-Length", str(len(payload))))
            start_response(f"{status} {_REASONS.get(status, 'Error')}", headers)
            return [payload]
        if call.service == "sqs" and call.operation == "ReceiveMessage":
            wait = self._receive_wait(call)
            if wait > 0:
                return self._long_poll(environ, start_response, call, wait)
        status_line, headers, payload = self._execute(call, environ, body)
        if call.service == "sqs" and call.operation in _SQS_WRITES:
            with self._sqs_activity:
                self._sqs_activity.notify_all()
        self._notify(call, status_line, payload)
        start_response(status_line, headers)
        return [payload]

    def _notify(self, call: CallInfo, status_line: str, payload: bytes) -> None:
        for observer in self.observers:
            try:
                observer(call, status_line, payload)
            except Exception:  # an observer must never break the request it watches
                log.exception("observer of %s.%s failed", call.service, call.operation)

    def _execute(
        self, call: CallInfo, environ: WSGIEnvironment, body: bytes
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        rules = self.dynamodb
        if rules is not None and call.service == "dynamodb" and rules.handles(call.operation):
            return rules(call.operation, environ, body, call.internal)
        streams = self.streams
        if streams is not None and call.service == "dynamodbstreams":
            return streams(call.operation, body)  # never moto's own streams (see there)
        return self._forward(environ, body)

    def _forward(
        self, environ: WSGIEnvironment, body: bytes
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        with self.lock:
            return self.forward_unlocked(environ, body)

    def forward_unlocked(
        self, environ: WSGIEnvironment, body: bytes
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        """Into moto; the caller holds the lock."""
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"] = status
            captured["headers"] = headers
            return lambda _data: None

        environ = dict(environ)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        result = self.app(environ, capture)
        try:
            # Consume the whole response under the lock: it may be generated lazily.
            payload = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return captured["status"], captured["headers"], payload

    def _receive_wait(self, call: CallInfo) -> int:
        params = self._receive_params(call)
        wait = params.get("WaitTimeSeconds")
        if wait is None:
            queue = str(params.get("QueueUrl", "")).rsplit("/", 1)[-1]
            return self.default_receive_wait.get(queue, 0)
        try:
            return int(wait)
        except (TypeError, ValueError):
            return 0

    @staticmethod
    def _receive_params(call: CallInfo) -> dict[str, Any]:
        if call.json_protocol:
            try:
                parsed = json.loads(call.body or b"{}")
            except ValueError:
                return {}
            return parsed if isinstance(parsed, dict) else {}
        return {k: v[0] for k, v in parse_qs(call.body.decode("utf-8", "replace")).items()}

    def _long_poll(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        call: CallInfo,
        wait: int,
    ) -> Iterable[bytes]:
        if wait > 20:
            wait = 20  # let moto reject it with its own error below
            body = call.body
        else:
            params = self._receive_params(call)
            params["WaitTimeSeconds"] = 0
            encoded = json.dumps(params) if call.json_protocol else urlencode(params)
            body = encoded.encode()
        deadline = time.monotonic() + wait
        while True:
            status_line, headers, payload = self._forward(environ, body)
            if not status_line.startswith("200") or _has_messages(payload, call.json_protocol):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing:
                break
            # Every send wakes the poll at once; the timeout only catches messages that become
            # visible again (visibility timeout, delay), so it need not spin: each poller would
            # otherwise ask moto 20 times a second while idle.
            with self._sqs_activity:
                self._sqs_activity.wait(min(IDLE_RECEIVE_RECHECK, remaining))
        start_response(
            status_line,
            [(k, v) for k, v in headers if k.lower() != "content-length"]
            + [("Content-Length", str(len(payload)))],
        )
        return [payload]

    def end_long_polls(self) -> None:
        """Answer every waiting long poll now (empty) and the later ones at once: the stack
        is stopping, and its pollers would otherwise wait up to 20 s for their answer."""
        with self._sqs_activity:
            self._closing = True
            self._sqs_activity.notify_all()


def _has_messages(payload: bytes, json_protocol: bool) -> bool:
    if json_protocol:
        try:
            return bool(json.loads(payload or b"{}").get("Messages"))
        except (ValueError, AttributeError):
            return True
    return b"<Message>" in payload


class _TableCopiesOncePerTransaction:
    """Stands in for the `copy` module inside moto.dynamodb.models.

    moto backs up a whole table for EVERY item of a TransactWriteItems (one deepcopy per item,
    all taken before anything is written), so a transaction costs items x table size and the
    suite slows down as its tables grow. Within one transaction the copies are of the same,
    unchanged table: copying each table once is exactly equivalent.
    """

    def __init__(self) -> None:
        self.local = threading.local()

    def deepcopy(self, value: Any, memo: Any = None) -> Any:
        from moto.dynamodb.models.table import Table

        tables: dict[int, Any] | None = getattr(self.local, "tables", None)
        if tables is None or not isinstance(value, Table):
            return copy.deepcopy(value, memo)
        if id(value) not in tables:
            tables[id(value)] = copy.deepcopy(value, memo)
        return tables[id(value)]

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)


_moto_patched = False


def _copy_tables_once_per_transaction() -> None:
    global _moto_patched
    if _moto_patched:
        return
    from moto.dynamodb import models

    shim = _TableCopiesOncePerTransaction()
    original = models.DynamoDBBackend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        shim.local.tables = {}
        try:
            original(self, transact_items)
        finally:
            shim.local.tables = None

    models.copy = shim  # type: ignore[assignment]
    models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    # The stack records stream changes itself (local/dynamodb_streams.py); moto's own
    # records would only cost a JSON dump per write and grow without bound.
    from moto.dynamodb.models.table import StreamShard

    StreamShard.add = lambda self, old, new: None  # type: ignore[method-assign]
    _moto_patched = True


class EmbeddedAws:
    """moto's server on 127.0.0.1 and a free port, in a daemon thread."""

    def __init__(self, strictness: Strictness | None = None) -> None:
        self.strictness = strictness  # None: read from os.environ at start
        self.registry = Registry()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.app: SerializedApp | None = None
        self._clients: dict[tuple[str, str], Any] = {}
        self._clients_lock = threading.Lock()
        self._session: Any = None

    def start(self) -> str:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        class QuietHandler(MotoRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                return None  # every AWS call would be a line; /_local/stats counts them

        _copy_tables_once_per_transaction()
        fast_dynamodb.install()

        class RememberingDispatcher(DomainDispatcherApplication):
            """moto's dispatcher, remembering which backend serves a host.

            moto lists its package directory (a few hundred stat calls) and tries its URL
            patterns again on every request; the answer for a host never changes.
            """

            def __init__(self) -> None:
                super().__init__(create_backend_app)
                self._backends: dict[str | None, Any] = {}

            def get_backend_for_host(self, host: str | None) -> Any:
                # Called under the dispatcher's own lock.
                if host not in self._backends:
                    self._backends[host] = super().get_backend_for_host(host)
                return self._backends[host]

        self.app = SerializedApp(RememberingDispatcher(), self.registry)
        if self.strictness is None:
            self.strictness = Strictness.from_environ(os.environ)
        self.app.streams = DynamoStreams(self.strictness.stream_shards, self.app.lock)
        self.app.dynamodb = DynamoRules(
            self.strictness, self.app.forward_unlocked, self.app.lock, self.app.streams
        )
        self._server = make_server(
            "127.0.0.1", 0, self.app, threaded=True, request_handler=QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="embedded-aws", daemon=True
        )
        self._thread.start()
        return self.endpoint

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("embedded AWS not started")
        return f"http://127.0.0.1:{self._server.server_port}"

    def client(self, service: str, credentials: tuple[str, str, str] | None = None) -> Any:
        """A boto3 client for the stack's own use (tagged as internal); clients are
        thread-safe and slow to make, so there is one per service and credentials.

        Without credentials it is the account's admin ("testing"); with a function's
        (access key, secret, session token) it has exactly that function's permissions, as
        Lambda's pollers do."""
        key = (service, credentials[0] if credentials else "")
        with self._clients_lock:
            if key not in self._clients:
                self._clients[key] = self._new_client(service, credentials)
            return self._clients[key]

    def set_authorizer(self, authorizer: Authorizer | None) -> None:
        if self.app is None:
            raise RuntimeError("embedded AWS not started")
        self.app.authorizer = authorizer

    def _new_client(self, service: str, credentials: tuple[str, str, str] | None) -> Any:
        import boto3
        from botocore.config import Config

        access_key, secret_key, token = credentials or ("testing", "testing", None)
        # One session for every client (made under _clients_lock, as a session is not
        # thread-safe): each new session would parse botocore's endpoint and service JSON
        # again, most of a stack's start with a client per function and service.
        if self._session is None:
            self._session = boto3.session.Session()
        return self._session.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=token,
            config=Config(
                user_agent_extra=INTERNAL_USER_AGENT,
                retries={"mode": "standard", "max_attempts": 5},
                max_pool_connections=32,
            ),
        )

    @property
    def streams(self) -> DynamoStreams:
        if self.app is None or self.app.streams is None:
            raise RuntimeError("embedded AWS not started")
        return self.app.streams

    def observe(self, observer: Observer) -> None:
        if self.app is None:
            raise RuntimeError("embedded AWS not started")
        self.app.observers.append(observer)

    def strict_stats(self) -> dict[str, Any]:
        return self.app.dynamodb.stats() if self.app and self.app.dynamodb else {}

    def set_default_receive_wait(self, queue_name: str, seconds: int) -> None:
        if self.app is not None:
            self.app.default_receive_wait[queue_name] = seconds

    def end_waits(self) -> None:
        """The stack stops: long polls and stream reads answer at once, so that their
        pollers see they must stop instead of waiting out their timeouts."""
        if self.app is not None:
            self.app.end_long_polls()
            if self.app.streams is not None:
                self.app.streams.end_waits()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
