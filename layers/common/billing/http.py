"""The one place that turns domain results and errors into HTTP responses.

Every HTTP function builds its router with `make_router()`: Powertools' HTTP API resolver with
request validation (pydantic models, unknown fields rejected), the 64 KiB body limit, and the
error body of API.md: {"error": {"code": ..., "message": ...}}.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from pydantic import BaseModel, ConfigDict, ValidationError

from billing import metrics, restore
from billing.api_docs import DEFAULT_LIMIT, MAX_CURSOR_LENGTH, MAX_LIMIT, SECURITY_SCHEMES
from billing.auth import Principal, principal_from_event
from billing.errors import DomainError, InvalidRequest, NotFound, PayloadTooLarge
from billing.pagination import open_cursor, seal_cursor

MAX_BODY_BYTES = 64 * 1024
JSON = "application/json"
_LIMIT = re.compile(r"[0-9]{1,6}")

logger = Logger(child=True)


class RequestBody(BaseModel):
    """Base of every request body: strict types, unknown fields rejected."""

    # defer_build: each is built on the first request that carries it (billing.api_models).
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)


@restore.before_snapshot
def _build_bodies() -> None:
    restore.build_models(RequestBody)


class Page(NamedTuple):
    """The page a list request asks for: `limit`, and `cursor` already opened (verified as one
    this server issued for `list_name` and `caller`). `seal()` makes the response's cursor."""

    list_name: str
    caller: str
    limit: int
    cursor: str | None

    def seal(self, page: dict[str, Any]) -> dict[str, Any]:
        next_cursor = seal_cursor(self.list_name, self.caller, page.get("next_cursor"))
        return {**page, "next_cursor": next_cursor}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response[str]:
    return Response(
        status_code=status,
        content_type=JSON,
        body=json.dumps(error_body(code, message)),
        headers=dict(headers or {}),
    )


def json_response(status: int, body: Any) -> Response[str]:
    return Response(status_code=status, content_type=JSON, body=json.dumps(body))


def checked(model: type[BaseModel], body: Mapping[str, Any]) -> dict[str, Any]:
    """`body`, read back by its response model (billing.api_models, strict). A field the model
    lacks, or a value it would render otherwise, is a bug of ours, but the body is sent all
    the same: on the POSTs that move money the write has committed by now, and failing the
    answer would make the caller retry or give up on what was done. The mismatch is logged
    and counted (ResponseSchemaMismatch, alarmed in the template; the test suite fails on
    any). The body itself is what is sent, so its bytes stay the handler's (key order, big
    ints)."""
    data = json.loads(json.dumps(body))
    try:
        rendered = model.model_validate(data).model_dump(
            mode="json", by_alias=True, exclude_unset=True
        )
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
        _mismatch(model, fields)
        return dict(body)
    if rendered != data:
        _mismatch(
            model, sorted(k for k in set(data) | set(rendered) if data.get(k) != rendered.get(k))
        )
    return dict(body)


def _mismatch(model: type[BaseModel], fields: list[str]) -> None:
    # Names of fields only: never their values (they may hold codes or money of a user).
    logger.error(
        "response body does not match its model",
        extra={"response_model": model.__name__, "fields": fields[:20]},
    )
    metrics.count(metrics.Metric.RESPONSE_SCHEMA_MISMATCH)  # by service: the log names the model


def model_response(status: int, model: type[BaseModel], body: Mapping[str, Any]) -> Response[str]:
    """A JSON response whose body is the route's response model (see `checked`)."""
    return json_response(status, checked(model, body))


def _body_size(event: Mapping[str, Any]) -> int:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return len(base64.b64decode(body, validate=False))
        except (binascii.Error, ValueError):
            return len(body)
    return len(body.encode("utf-8"))


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(part) for part in err.get("loc", ()) if part not in ("body", "query", 0))
        if err.get("type") == "json_invalid":
            return "The body is not valid JSON."
        if err.get("type") == "extra_forbidden":
            parts.append(f"unknown field '{loc}'")
        else:
            parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "Invalid request: " + "; ".join(parts) + "."


def error_result(error: DomainError) -> dict[str, Any]:
    """A domain error as a raw API Gateway v2 result, for refusals made before routing."""
    return {
        "statusCode": error.status,
        "headers": {"Content-Type": JSON, **error.headers},
        "body": json.dumps(error_body(error.code, error.message)),
        "isBase64Encoded": False,
    }


def resolve_admin(
    router: APIGatewayHttpResolver, event: Mapping[str, Any], context: Any
) -> dict[str, Any]:
    """Route a request to a function whose every route is admin-only: 403 for anyone else,
    before the body is even validated (a non-admin learns nothing about the route's input)."""
    try:
        principal_from_event(dict(event)).require_admin()
    except DomainError as refusal:
        return error_result(refusal)
    return router.resolve(event, context)


class _LimitedResolver(APIGatewayHttpResolver):
    """Refuses bodies over 64 KiB before any parsing or validation looks at them."""

    def resolve(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        if _body_size(event) > MAX_BODY_BYTES:
            return error_result(PayloadTooLarge())
        return super().resolve(event, context)


def make_router(field_codes: Mapping[str, DomainError] | None = None) -> APIGatewayHttpResolver:
    """A resolver with validation and our error mapping.

    field_codes maps a body field to the domain error its validation failure means (e.g.
    "amount" → InvalidAmount), so a contract-specific code wins over invalid_request.
    """
    router = _LimitedResolver(enable_validation=True)
    # The routes declare security=BEARER (billing.api_docs): the scheme they name.
    router.configure_openapi(security_schemes=SECURITY_SCHEMES)
    specific = dict(field_codes or {})

    @router.exception_handler(DomainError)
    def domain_error(exc: DomainError) -> Response[str]:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @router.exception_handler(UnicodeDecodeError)
    def undecodable(_exc: UnicodeDecodeError) -> Response[str]:
        # A JSON body that is not UTF-8 (API Gateway passes it base64-encoded).
        return error_response(400, InvalidRequest.code, "The body is not valid UTF-8 JSON.")

    @router.exception_handler(RequestValidationError)
    def invalid(exc: RequestValidationError) -> Response[str]:
        errors = list(exc.errors())
        for err in errors:
            loc = [str(part) for part in err.get("loc", ())]
            for field, error in specific.items():
                if field in loc and err.get("type") != "extra_forbidden":
                    return error_response(error.status, error.code, error.message)
        return error_response(400, InvalidRequest.code, _describe(errors))

    @router.not_found
    def not_found(_exc: Exception) -> Response[str]:
        return error_response(404, NotFound.code, "No such route.")

    return router


def principal(router: APIGatewayHttpResolver) -> Principal:
    return principal_from_event(router.current_event.raw_event)


def query_params(
    router: APIGatewayHttpResolver | APIGatewayHttpRouter, *allowed: str
) -> dict[str, str]:
    """The query string of a route that takes only `allowed` parameters: another one is
    400 invalid_request (as an unknown body field is), never silently ignored."""
    query = dict(router.current_event.query_string_parameters or {})
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise InvalidRequest(f"Unknown query parameter: {unknown[0][:40]}.")
    return query


def page_params(
    router: APIGatewayHttpResolver | APIGatewayHttpRouter, list_name: str, caller: str
) -> Page:
    """?limit= (ASCII digits, 1..100, default 20) and ?cursor= (one this server issued for
    `list_name` and `caller`) of a list; anything else is 400 invalid_request."""
    query = router.current_event.query_string_parameters or {}
    return open_page(list_name, caller, query.get("limit", DEFAULT_LIMIT), query.get("cursor"))


def open_page(list_name: str, caller: str, limit: str | int, cursor: str | None) -> Page:
    """The page of a list from its ?limit= (text as sent, or the default) and ?cursor=, as the
    route declares them (billing.api_docs.Limit, Cursor): see `page_params`."""
    raw_limit = str(limit)
    # str.isdigit() also accepts "²" or "٣", which int() refuses or reads as another number.
    if not _LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}.")
    cursor = cursor or None
    if cursor is not None and len(cursor) > MAX_CURSOR_LENGTH:
        raise InvalidRequest("The cursor is invalid.")
    return Page(list_name, caller, int(raw_limit), open_cursor(list_name, caller, cursor))


Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
