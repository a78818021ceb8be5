"""What each HTTP route declares for the OpenAPI document, in the words of API.md.

A route reads like its API.md entry:

    @router.get("/ledger", security=BEARER, responses=answers(ok(200, LedgerPage, "..."), 400, 401))
    def list_ledger(limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> Response[str]: ...

- `answers(...)` builds Powertools' `responses=`: success bodies from `ok` (a model of
  billing.api_models), `text`, `replayable` (an Idempotency-Key POST's success); error
  statuses by number (the shared descriptions of ERRORS) or as a whole response
  (IDEMPOTENCY_409, a route's own).
- `security=BEARER` on every route behind the JWT authorizer; webhooks declare none.
- The parameters the handlers read are annotated types here (Powertools' Query and Header):
  declaring one documents it and hands its value to the handler. Each is text as sent
  (`str | None`): the handlers' own checks (billing.http.open_page, the domain's parsers)
  keep their messages; the schema shown is the contract's (`shown_as`), e.g. an integer limit.
- Repeated query parameters and headers reach the handler as API Gateway joins them (values
  comma-joined, the same text the raw event holds), never as a list.

tools/openapi.py merges the functions' documents and checks each route against the template.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, cast

from aws_lambda_powertools.event_handler.openapi.params import Header, Query
from aws_lambda_powertools.event_handler.openapi.types import (
    OpenAPIResponse,
    OpenAPIResponseHeader,
)
from pydantic import BaseModel, BeforeValidator

from billing.api_models import Error, GatewayMessage

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler.openapi.models import SecurityScheme

JSON = "application/json"
TEXT = "text/plain"
CSV = "text/csv"

BEARER_AUTH = "bearerAuth"
BEARER: list[dict[str, list[str]]] = [{BEARER_AUTH: []}]
# Plain data, validated into Powertools' models only when a document is generated: importing
# openapi.models (~170 ms) at every cold start would serve no request.
SECURITY_SCHEMES = cast(
    "dict[str, SecurityScheme]",
    {
        BEARER_AUTH: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "The JWT checked by API Gateway's authorizer: `sub` is the user; "
            "admins have `admin` in `cognito:groups`.",
        }
    },
)

Responses = dict[int, OpenAPIResponse]

# ---------------------------------------------------------------- responses


def ok(status: int, model: type[BaseModel], description: str) -> Responses:
    """A JSON success body: the resource's model (the one the handler renders with)."""
    return {status: {"description": description, "content": {JSON: {"model": model}}}}


def text(status: int, description: str, media: str = TEXT) -> Responses:
    """A text body (CSV statements, EPay's protocol)."""
    return {
        status: {"description": description, "content": {media: {"schema": {"type": "string"}}}}
    }


def _error(
    description: str, model: Any = Error, **headers: OpenAPIResponseHeader
) -> OpenAPIResponse:
    response: OpenAPIResponse = {"description": description, "content": {JSON: {"model": model}}}
    if headers:
        response["headers"] = {name.replace("_", "-"): value for name, value in headers.items()}
    return response


ERRORS: dict[int, OpenAPIResponse] = {
    400: _error("Invalid input (invalid_request or a more specific code); nothing written."),
    401: _error("Missing or bad token (API Gateway's JWT authorizer).", GatewayMessage | Error),
    403: _error("forbidden: not an admin."),
    404: _error("not_found / account_not_found (or no such route).", Error | GatewayMessage),
    409: _error("The resource's state does not allow it."),
    413: _error("payload_too_large: body over 64 KiB."),
    429: _error(
        "too_many_attempts.",
        Retry_After={
            "schema": {"type": "string"},
            "description": "Seconds until another try is counted.",
        },
    ),
    502: _error("provider_error: the payment provider refused or is unreachable."),
    503: _error("The event could not be queued; the provider must deliver it again."),
}

# Idempotency-Key POSTs (API.md, Conventions): the replayed reply is marked, a reused key is 409.
IDEMPOTENCY_409: Responses = {
    409: _error(
        "idempotency_key_reused: the key was used with another body; "
        "idempotency_key_in_progress: its first request still runs (retry after Retry-After).",
        Retry_After={
            "schema": {"type": "string"},
            "description": "With idempotency_key_in_progress: seconds before retrying.",
        },
    )
}


def replayable(status: int, model: type[BaseModel], description: str) -> Responses:
    """The success of an Idempotency-Key POST: also the stored reply to a repeated key."""
    response = ok(status, model, description)[status]
    response["headers"] = {
        "Idempotent-Replayed": {
            "schema": {"type": "string", "enum": ["true"]},
            "description": "Present on the stored reply to a repeated Idempotency-Key.",
        }
    }
    return {status: response}


def answers(*parts: int | Mapping[int, OpenAPIResponse]) -> Responses:
    """A route's `responses=`: success bodies and errors, each error by its status (ERRORS) or
    as a response of its own. Listed in status order, as the document shows them."""
    collected: Responses = {}
    for part in parts:
        if isinstance(part, int):
            collected[part] = ERRORS[part]
        else:
            collected.update(part)
    return dict(sorted(collected.items()))


# ---------------------------------------------------------------- parameters


def shown_as(**schema: Any) -> Any:
    """The schema the document shows for a parameter the handler reads as text (a pydantic
    json_schema_extra callable: Powertools passes it through, though typed as a dict)."""

    def replace(generated: dict[str, Any]) -> None:
        generated.clear()
        generated.update(schema)

    return replace


def _as_gateway_joins(value: Any) -> Any:
    # API Gateway joins a repeated parameter's values with commas; Powertools hands them over
    # as a list when the raw query string repeats the name. The handler sees the joined text.
    return ",".join(map(str, value)) if isinstance(value, list) else value


def _query(description: str | None = None, alias: str | None = None, **schema: Any) -> Any:
    return Query(
        alias=alias, description=description, json_schema_extra=shown_as(type="string", **schema)
    )


_Joined = BeforeValidator(_as_gateway_joins)

# ?limit= (ASCII digits, 1..100) and ?cursor= of every list; checked by billing.http.open_page.
# The limit's default is the contract's number; a sent limit arrives as its text.
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_CURSOR_LENGTH = 2048
Limit = Annotated[
    str | int,
    _Joined,
    Query(
        json_schema_extra=shown_as(
            type="integer", minimum=1, maximum=MAX_LIMIT, default=DEFAULT_LIMIT
        )
    ),
]
Cursor = Annotated[
    str | None,
    _Joined,
    _query(
        "Opaque: the next_cursor of the previous page of this list, for this caller (any "
        "other cursor is 400 invalid_request).",
        maxLength=MAX_CURSOR_LENGTH,
    ),
]
# A day range (statements, the usage summary): checked by the domain's day_range. `from` is
# Python's keyword: the handlers name it `from_`.
FromDay = Annotated[
    str | None,
    _Joined,
    _query("First day, ISO-8601 date (inclusive).", alias="from", format="date"),
]
ToDay = Annotated[
    str | None, _Joined, _query("Last day, ISO-8601 date (inclusive).", format="date")
]
# GET /usage's filters: checked by billing.usage.history.parse_filters.
FromTime = Annotated[
    str | None, _Joined, _query("Created at or after: an ISO-8601 date or time.", alias="from")
]
ToTime = Annotated[
    str | None,
    _Joined,
    _query("Created before the end of this ISO-8601 date, or before this time."),
]
ModelName = Annotated[str | None, _Joined, _query("Only this model.", maxLength=128)]
KeyId = Annotated[
    str | None, _Joined, _query("Only usage metered with this API key.", maxLength=128)
]
GroupBy = Annotated[
    str | None,
    _Joined,
    _query("Bucket by day (default), model or key.", enum=["day", "model", "key"]),
]

# The Idempotency-Key header of the POSTs that move quota or money (billing.idempotency).
IdempotencyKey = Annotated[
    str | None,
    _Joined,
    Header(
        alias="Idempotency-Key",
        description="One per submission, reused on its retries (per caller, kept 24 h): the "
        "same key and body again return the first result and write nothing.",
        json_schema_extra=shown_as(type="string", minLength=1, maxLength=255, pattern="^[!-~]+$"),
    ),
]


def signature_header(name: str) -> Any:
    """A webhook's signature header (verified on the raw request by the provider's module)."""
    return Annotated[
        str | None,
        _Joined,
        Header(
            alias=name,
            description="The provider's signature of the raw body.",
            json_schema_extra=shown_as(type="string"),
        ),
    ]


# A webhook's body is the provider's own, verified raw (so not parsed by a model).
RAW_JSON_BODY: dict[str, Any] = {"requestBody": {"content": {JSON: {"schema": {"type": "object"}}}}}


def present(values: Mapping[str, str | None]) -> dict[str, str]:
    """The parameters that were sent (the domain's parsers take what is there)."""
    return {name: value for name, value in values.items() if value is not None}
