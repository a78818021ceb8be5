"""The HTTP listener: API Gateway (HTTP API, payload 2.0) and Lambda Invoke API emulation,
the dev issuer, the local control endpoints, the console's static files and the sandbox."""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from werkzeug.exceptions import NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.utils import send_from_directory
from werkzeug.wrappers import Request, Response

from local.auth import Unauthorized, authorize
from local.aws import Fault
from local.clock import ClockError
from local.routes import Route, find_route
from local.template import ACCOUNT_ID, HTTP_API_ID, STACK_NAME

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from local.stack import Stack

log = logging.getLogger("local.gateway")

MAX_API_PAYLOAD = 10 * 1024 * 1024  # API Gateway's request limit
MAX_INVOKE_PAYLOAD = 6 * 1024 * 1024  # Lambda's synchronous payload limit


class PortInUse(Exception):
    pass


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(payload), status=status, headers=headers, mimetype="application/json"
    )


def _api_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    # API Gateway's own error body shape.
    return json_response({"message": message}, status, headers)


def _lambda_error(status: int, error_type: str, message: str) -> Response:
    return json_response(
        {"Type": "User", "Message": message}, status, {"x-amzn-ErrorType": error_type}
    )


def _is_text(content_type: str) -> bool:
    # API Gateway passes these bodies as text; anything else (forms too) is base64.
    media = content_type.split(";", 1)[0].strip().lower()
    return (
        not media
        or media.startswith("text/")
        or media == "application/json"
        or media.endswith("+json")
    )


class QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None  # the gateway logs its own, shorter lines (without query strings)


class Gateway:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.local_map = Map(
            [
                Rule("/_local/health", endpoint="health", methods=["GET"]),
                Rule("/_local/token", endpoint="token", methods=["POST"]),
                Rule(
                    "/_local/.well-known/openid-configuration", endpoint="openid", methods=["GET"]
                ),
                Rule("/_local/.well-known/jwks.json", endpoint="jwks", methods=["GET"]),
                Rule("/_local/faults", endpoint="faults", methods=["GET", "POST", "DELETE"]),
                Rule("/_local/stats", endpoint="stats", methods=["GET"]),
                Rule("/_local/stats/reset", endpoint="stats_reset", methods=["POST"]),
                Rule("/_local/schedules/<function>/<event>", endpoint="schedule", methods=["POST"]),
                Rule("/_local/reload", endpoint="reload", methods=["POST"]),
                Rule("/_local/clock", endpoint="clock", methods=["GET", "POST"]),
                Rule("/_local/iam", endpoint="iam", methods=["GET"]),
                Rule("/_local/events", endpoint="events", methods=["GET", "DELETE"]),
            ]
        )

    # ------------------------------------------------------------ server

    def bind(self, port: int) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            sock.close()
            raise PortInUse(str(exc)) from exc
        sock.listen(128)
        self._socket = sock
        bound = int(sock.getsockname()[1])
        self.server = make_server(
            "127.0.0.1", bound, self, threaded=True, request_handler=QuietHandler, fd=sock.fileno()
        )
        return bound

    def serve_in_background(self) -> None:
        assert self.server is not None
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="gateway", daemon=True
        )
        self._thread.start()

    def shutdown(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self._socket is not None:
            self._socket.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ------------------------------------------------------------ WSGI

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        started = time.monotonic()
        target = "-"
        try:
            response, target = self.dispatch(request)
        except Exception:
            log.exception("gateway error on %s %s", request.method, request.path)
            response = _api_error(500, "Internal Server Error")
        if request.path != "/_local/health":
            elapsed = (time.monotonic() - started) * 1000
            self.stack.say(
                f"{request.method} {request.path} -> {target} "
                f"{response.status_code} ({elapsed:.0f} ms)"
            )
        return response(environ, start_response)

    def dispatch(self, request: Request) -> tuple[Response, str]:
        path = request.path
        if path == "/_local/health":
            return self.health(), "local"
        if not self.stack.ready.is_set():
            return _api_error(503, "Service Unavailable: the local stack is starting"), "local"
        if path == "/openapi.json" and request.method == "GET":
            return self.openapi(), "local"
        if path.startswith("/_local/sandbox"):
            assert self.stack.sandbox is not None
            return self.stack.sandbox.dispatch(request), "sandbox"
        if path.startswith("/_local/"):
            return self.local(request), "local"
        if path.startswith("/2015-03-31/functions/"):
            return self.lambda_invoke(request)
        if path == "/console" or path.startswith("/console/"):
            return self.console(request), "console"
        return self.http_api(request)

    # ------------------------------------------------------------ local endpoints

    def openapi(self) -> Response:
        """The API's OpenAPI document (generated by tools/openapi.py, committed)."""
        document = self.stack.options.root / "openapi.json"
        if not document.is_file():
            return _api_error(404, "Not Found: openapi.json (run make openapi)")
        return Response(
            document.read_bytes(),
            mimetype="application/json",
            headers={"Cache-Control": "no-store"},
        )

    def local(self, request: Request) -> Response:
        adapter = self.local_map.bind_to_environ(request.environ)
        try:
            endpoint, values = adapter.match()
        except NotFound:
            return json_response({"message": "Not Found"}, 404)
        except Exception as exc:  # MethodNotAllowed and friends
            code = getattr(exc, "code", 400)
            return json_response({"message": str(exc)}, int(code or 400))
        handler = getattr(self, f"local_{endpoint}")
        result: Response = handler(request, **values)
        return result

    def health(self) -> Response:
        stack = self.stack
        if not stack.ready.is_set():
            return json_response(
                {"status": "starting", "port": stack.port, "error": stack.startup_error}, 503
            )
        return json_response(stack.health())

    def local_token(self, request: Request) -> Response:
        body = request.get_json(silent=True, force=True)  # curl -d sends a form type
        if not isinstance(body, dict) or not isinstance(body.get("sub"), str) or not body["sub"]:
            return json_response(
                {
                    "error": {
                        "code": "invalid_request",
                        "message": 'body must be {"sub": str, "admin"?: bool}',
                    }
                },
                400,
            )
        allowed = {"sub", "admin", "email", "expires_in", "claims"}
        unknown = set(body) - allowed
        admin = body.get("admin", False)
        expires_in = body.get("expires_in", 3600)
        claims = body.get("claims", {})
        if (
            unknown
            or not isinstance(admin, bool)
            or not isinstance(expires_in, int)
            or isinstance(expires_in, bool)
            or not isinstance(claims, dict)
            or not isinstance(body.get("email", ""), str)
        ):
            return json_response(
                {
                    "error": {
                        "code": "invalid_request",
                        "message": f"bad token request fields: {sorted(unknown) or 'types'}",
                    }
                },
                400,
            )
        assert self.stack.issuer is not None
        token = self.stack.issuer.issue(
            body["sub"], admin=admin, email=body.get("email"), expires_in=expires_in, claims=claims
        )
        return json_response({"token": token, "token_type": "Bearer", "expires_in": expires_in})

    def local_openid(self, request: Request) -> Response:
        assert self.stack.issuer is not None
        return json_response(self.stack.issuer.openid_configuration())

    def local_jwks(self, request: Request) -> Response:
        assert self.stack.issuer is not None
        return json_response(self.stack.issuer.jwks())

    def local_faults(self, request: Request) -> Response:
        registry = self.stack.aws.registry
        if request.method == "GET":
            return json_response(self.stack.faults())
        if request.method == "DELETE":
            self.stack.clear_faults()
            return json_response(self.stack.faults())
        body = request.get_json(silent=True, force=True)  # curl -d sends a form type
        if not isinstance(body, dict):
            return json_response(
                {"error": {"code": "invalid_request", "message": "a JSON object is required"}}, 400
            )
        try:
            if body.get("clear") is True:
                self.stack.clear_faults()
            elif "poller" in body:
                event = body.get("event")
                self.stack.add_poller_fault(
                    str(body["poller"]),
                    int(body.get("die_after_invoke", 1)),
                    None if event is None else str(event),
                )
            else:
                registry.add(Fault.from_json(body))
        except (ValueError, KeyError, TypeError) as exc:
            return json_response({"error": {"code": "invalid_request", "message": str(exc)}}, 400)
        return json_response(self.stack.faults())

    def local_stats(self, request: Request) -> Response:
        return json_response(self.stack.stats())

    def local_stats_reset(self, request: Request) -> Response:
        self.stack.reset_stats()
        return json_response(self.stack.stats())

    def local_schedule(self, request: Request, function: str, event: str) -> Response:
        schedule = self.stack.schedule(function, event)
        if schedule is None:
            return json_response(
                {
                    "error": {
                        "code": "not_found",
                        "message": f"no schedule event {function}/{event}",
                    }
                },
                404,
            )
        result = schedule.run_once()
        headers = {"X-Amz-Function-Error": "Unhandled"} if result.function_error else None
        return Response(
            result.payload,
            status=500 if result.function_error else 200,
            headers=headers,
            mimetype="application/json",
        )

    def local_iam(self, request: Request) -> Response:
        """Every IAM refusal (function, action, resource, time) and allowed calls per function."""
        return json_response(self.stack.iam_report())

    def local_events(self, request: Request) -> Response:
        """GET: the events put on the buses, newest first (?limit=1..1000, default 100;
        ?type= a detail-type, ?source=, ?bus=); DELETE: forget them."""
        bridge = self.stack.event_bridge
        assert bridge is not None
        if request.method == "DELETE":
            bridge.clear()
            return json_response({"events": [], "total": 0})
        unknown = sorted(set(request.args) - {"limit", "type", "source", "bus"})
        limit_text = request.args.get("limit", "100")
        if unknown or not (limit_text.isascii() and limit_text.isdigit()):
            message = f"unknown parameters {unknown}" if unknown else "limit is 1..1000"
            return json_response({"error": {"code": "invalid_request", "message": message}}, 400)
        limit = int(limit_text)
        if not 1 <= limit <= 1000:
            message = "limit is 1..1000"
            return json_response({"error": {"code": "invalid_request", "message": message}}, 400)
        return json_response(
            bridge.events(
                limit=limit,
                detail_type=request.args.get("type"),
                source=request.args.get("source"),
                bus=request.args.get("bus"),
            )
        )

    def local_clock(self, request: Request) -> Response:
        """GET: the billing clock; POST {"advance_seconds"}: move it forward (never back) for
        every function, then run the schedules that came due (local/clock.py)."""
        if request.method == "GET":
            return json_response(self.stack.clock.describe())
        body = request.get_json(silent=True, force=True)
        extra = sorted(set(body) - {"advance_seconds"}) if isinstance(body, dict) else []
        if not isinstance(body, dict) or "advance_seconds" not in body or extra:
            message = 'the body is {"advance_seconds": <whole seconds>}'
            return json_response({"error": {"code": "invalid_request", "message": message}}, 400)
        try:
            moved = self.stack.advance_clock(body["advance_seconds"])
        except ClockError as exc:
            return json_response({"error": {"code": "invalid_request", "message": str(exc)}}, 400)
        return json_response(moved)

    def local_reload(self, request: Request) -> Response:
        assert self.stack.runtime is not None
        self.stack.runtime.recycle()
        return json_response({"recycled": True})

    # ------------------------------------------------------------ Lambda Invoke API

    def lambda_invoke(self, request: Request) -> tuple[Response, str]:
        parts = request.path.split("/")
        # ["", "2015-03-31", "functions", name, "invocations"]
        if len(parts) != 5 or parts[4] != "invocations" or request.method != "POST":
            return _lambda_error(404, "ResourceNotFoundException", "Unknown operation"), "lambda"
        name = _function_name(unquote(parts[3]))
        runtime = self.stack.runtime
        assert runtime is not None
        iam = self.stack.iam
        # Authorized before anything else, as in AWS (even for a function that does not exist).
        refused = iam.check_invoke(request.headers.get("Authorization", ""), name) if iam else None
        if refused is not None:
            return Response(refused[2], status=refused[0], headers=refused[1]), "lambda"
        if name not in runtime:
            return _lambda_error(
                404, "ResourceNotFoundException", f"Function not found: {_function_arn(name)}"
            ), "lambda"
        invocation_type = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type not in ("RequestResponse", "Event", "DryRun"):
            return _lambda_error(
                400,
                "InvalidParameterValueException",
                f"Unsupported invocation type {invocation_type}",
            ), name
        raw = request.get_data()
        limit = MAX_INVOKE_PAYLOAD if invocation_type != "Event" else 1024 * 1024
        if len(raw) > limit:
            return _lambda_error(
                413,
                "RequestTooLargeException",
                f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
            ), name
        try:
            payload = json.dumps(json.loads(raw)) if raw.strip() else "{}"
        except ValueError as exc:
            return _lambda_error(
                400,
                "InvalidRequestContentException",
                f"Could not parse request body into json: {exc}",
            ), name
        request_id = str(uuid.uuid4())
        base_headers = {"x-amzn-RequestId": request_id, "X-Amz-Executed-Version": "$LATEST"}
        if invocation_type == "DryRun":
            return Response(status=204, headers=base_headers), name
        if invocation_type == "Event":
            assert self.stack.async_invoker is not None
            self.stack.async_invoker.submit(name, payload, request_id)  # retried as Lambda does
            return Response(status=202, headers=base_headers), name
        result = runtime.invoke(name, payload, request_id)
        headers = dict(base_headers)
        if result.function_error:
            headers["X-Amz-Function-Error"] = "Unhandled"
        return Response(
            result.payload, status=200, headers=headers, mimetype="application/json"
        ), name

    # ------------------------------------------------------------ console

    def console(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return _api_error(405, "Method Not Allowed")
        directory = self.stack.console_dir
        relative = request.path[len("/console") :].lstrip("/")
        if relative in ("", "topup/"):
            # The page loads its files relative to /console/topup: one canonical address.
            query = request.query_string.decode()
            target = "/console/topup" + (f"?{query}" if query else "")
            return Response(status=302, headers={"Location": target})
        if relative == "topup":
            relative = "index.html"
        if relative == "config.json":
            return json_response(
                {"apiBaseUrl": "", "auth": {"mode": "local", "tokenUrl": "/_local/token"}},
                headers={"Cache-Control": "no-store"},
            )
        try:
            response = send_from_directory(directory, relative, request.environ, max_age=0)
        except NotFound:
            return _api_error(404, "Not Found")
        guessed, _ = mimetypes.guess_type(relative)
        if guessed and response.mimetype != guessed:
            response.mimetype = guessed
        return response

    # ------------------------------------------------------------ HTTP API

    def http_api(self, request: Request) -> tuple[Response, str]:
        api = self.stack.api
        cors = api.cors if api is not None else None
        origin = request.headers.get("Origin")
        if (
            request.method == "OPTIONS"
            and cors is not None
            and origin
            and request.headers.get("Access-Control-Request-Method")
        ):
            return self._preflight(request, origin), "cors"
        response, target = self._route(request)
        if cors is not None and origin:
            for key in [
                k for k, _ in response.headers.items() if k.lower().startswith("access-control-")
            ]:
                del response.headers[key]
            allowed = cors.origin_allowed(origin)
            if allowed:
                response.headers["Access-Control-Allow-Origin"] = allowed
                if cors.expose_headers:
                    response.headers["Access-Control-Expose-Headers"] = ",".join(
                        cors.expose_headers
                    )
                if cors.allow_credentials:
                    response.headers["Access-Control-Allow-Credentials"] = "true"
                if allowed != "*":
                    response.headers.add("Vary", "Origin")
        return response, target

    def _preflight(self, request: Request, origin: str) -> Response:
        api = self.stack.api
        assert api is not None and api.cors is not None
        cors = api.cors
        response = Response(status=204)
        allowed = cors.origin_allowed(origin)
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = allowed
            if cors.allow_methods:
                response.headers["Access-Control-Allow-Methods"] = ",".join(cors.allow_methods)
            if cors.allow_headers:
                requested = request.headers.get("Access-Control-Request-Headers", "")
                headers = cors.allow_headers
                if "*" in headers and requested:
                    headers = (requested,)
                response.headers["Access-Control-Allow-Headers"] = ",".join(headers)
            if cors.max_age is not None:
                response.headers["Access-Control-Max-Age"] = str(cors.max_age)
            if cors.allow_credentials:
                response.headers["Access-Control-Allow-Credentials"] = "true"
        return response

    def _route(self, request: Request) -> tuple[Response, str]:
        request_id = base64.b32encode(uuid.uuid4().bytes[:10]).decode().rstrip("=")
        headers = {"apigw-requestid": request_id}
        # Routes match the raw (still percent-encoded) path, as API Gateway's do.
        found = find_route(self.stack.routes, request.method, _raw_path(request))
        if found is None:
            return _api_error(404, "Not Found", headers), "-"
        route, path_params = found
        if request.content_length and request.content_length > MAX_API_PAYLOAD:
            return _api_error(413, "Request Entity Too Large", headers), route.function
        authorizer_context: dict[str, Any] | None = None
        if route.authorizer is not None:
            assert self.stack.issuer is not None
            header_value = request.headers.get(route.authorizer.identity_header)
            try:
                claims, scopes = authorize(
                    route.authorizer, self.stack.issuer, header_value, list(route.scopes) or None
                )
            except Unauthorized as exc:
                challenge = {
                    "www-authenticate": f'Bearer error="invalid_token" error_description="{exc}"'
                }
                if header_value:
                    headers.update(challenge)
                return _api_error(401, "Unauthorized", headers), "authorizer"
            except PermissionError:
                return _api_error(403, "Forbidden", headers), "authorizer"
            authorizer_context = {"jwt": {"claims": claims, "scopes": scopes}}
        event = build_event(request, route, path_params, authorizer_context, request_id)
        runtime = self.stack.runtime
        assert runtime is not None
        result = runtime.invoke(route.function, json.dumps(event))
        if result.function_error:
            log.warning("%s failed on %s: %s", route.function, route.route_key, result.error_type)
            return _api_error(500, "Internal Server Error", headers), route.function
        return map_response(result.payload, headers, route.function), route.function


def _raw_path(request: Request) -> str:
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    return str(raw).split("?", 1)[0] if raw else request.path


def _function_name(name: str) -> str:
    # Accept a logical id, "name:qualifier", a full or partial ARN, or the physical name.
    if ":function:" in name:
        name = name.split(":function:", 1)[1]
    name = name.split(":", 1)[0]
    prefix = f"{STACK_NAME}-"
    return name[len(prefix) :] if name.startswith(prefix) else name


def _function_arn(name: str) -> str:
    return f"arn:aws:lambda:us-east-1:{ACCOUNT_ID}:function:{name}"


def build_event(
    request: Request,
    route: Route,
    path_params: dict[str, str],
    authorizer: dict[str, Any] | None,
    request_id: str,
) -> dict[str, Any]:
    """An API Gateway HTTP API payload format 2.0 event."""
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        name = key.lower()
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    cookies = [c.strip() for c in headers.pop("cookie", "").split(";") if c.strip()]
    source_ip = request.remote_addr or "127.0.0.1"
    headers.setdefault("x-forwarded-for", source_ip)
    headers.setdefault("x-forwarded-proto", "http")
    headers.setdefault("x-forwarded-port", str(request.environ.get("SERVER_PORT", "")))
    headers.setdefault("x-amzn-trace-id", f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}")
    raw_query = request.query_string.decode("latin-1")
    query: dict[str, str] = {}
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        query[key] = f"{query[key]},{value}" if key in query else value
    now = datetime.now(UTC)
    host = request.host.split(":", 1)[0]
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": _raw_path(request),
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": HTTP_API_ID,
            "domainName": host,
            "domainPrefix": host.split(".", 1)[0],
            "http": {
                "method": request.method,
                "path": request.path,
                "protocol": request.environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
                "sourceIp": source_ip,
                "userAgent": request.headers.get("User-Agent", ""),
            },
            "requestId": request_id,
            "routeKey": route.route_key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if path_params:
        event["pathParameters"] = {k: unquote(v) for k, v in path_params.items()}
    if authorizer is not None:
        event["requestContext"]["authorizer"] = authorizer
    body = request.get_data()
    if body:
        if _is_text(request.headers.get("Content-Type", "")):
            try:
                event["body"] = body.decode("utf-8")
            except UnicodeDecodeError:
                event["body"] = base64.b64encode(body).decode()
                event["isBase64Encoded"] = True
        else:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
    return event


def map_response(payload: str, headers: dict[str, str], function: str) -> Response:
    """API Gateway's mapping of a payload 2.0 response."""
    try:
        result = json.loads(payload)
    except ValueError:
        log.error("%s returned a response that is not JSON", function)
        return _api_error(500, "Internal Server Error", headers)
    if not (isinstance(result, dict) and "statusCode" in result):
        # No statusCode: API Gateway assumes 200 and sends the returned JSON as the body.
        return Response(payload, status=200, headers=headers, mimetype="application/json")
    status = result.get("statusCode")
    body = result.get("body")
    response_headers = result.get("headers") or {}
    cookies = result.get("cookies") or []
    if (
        not isinstance(status, int)
        or isinstance(status, bool)
        or not 100 <= status <= 599
        or (body is not None and not isinstance(body, str))
        or not isinstance(response_headers, dict)
        or not isinstance(cookies, list)
    ):
        log.error(
            "%s returned a malformed response (statusCode int, body str, headers "
            "object, cookies list are expected)",
            function,
        )
        return _api_error(500, "Internal Server Error", headers)
    data: bytes = b""
    if body:
        data = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
    response = Response(data, status=status)
    response.headers.remove("Content-Type")
    for key, value in response_headers.items():
        response.headers[str(key)] = str(value)
    for cookie in cookies:
        response.headers.add("Set-Cookie", str(cookie))
    if "Content-Type" not in response.headers and data:
        response.headers["Content-Type"] = "application/json"
    for key, value in headers.items():
        response.headers.setdefault(key, value)
    return response
