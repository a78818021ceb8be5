"""Generate the API's OpenAPI document (openapi.json at the repo root) from the handlers.

    .venv/bin/python tools/openapi.py            # (re)write openapi.json  (make openapi)
    .venv/bin/python tools/openapi.py --check    # exit 1 if openapi.json is not up to date

Every HTTP function of infra/template.yaml whose code exists is imported and its Powertools
resolver (`router` in app.py) gives the operations: paths, methods, path parameters and request
bodies (the handlers' pydantic models, strict, unknown fields refused). The routes of each
resolver must be exactly the template's HttpApi routes of that function, or this fails.

The response bodies are the layer's models (billing.api_models: one per resource, strict,
so a rendered field they lack fails tests/integration/test_openapi_responses.py). What the
handlers cannot tell Powertools (they return `Response[str]` and map validation errors to
400 themselves) is added here from API.md, the contract: which model each operation answers
with and its error statuses, the `?limit=&cursor=` of lists and the providers' webhook
inputs. An operation without an entry in RESPONSES fails the generation, so a new route
cannot silently go undocumented. Authenticated routes require the JWT bearer scheme; webhooks
require none. The local stack serves the file at GET /openapi.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "openapi.json"
TITLE = "Quota & Top-up API"

sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]

from billing.api_models import (  # noqa: E402
    MODELS,
    Account,
    Alerts,
    AutoTopupRule,
    Code,
    CodeBatch,
    CodePage,
    Error,
    GatewayMessage,
    GrantPage,
    LedgerPage,
    LimitDeleted,
    Order,
    OrderPage,
    Redeemed,
    SpendLimit,
    SpendLimits,
    TopupOptions,
    Transferred,
    UnbilledUsage,
    UnbilledUsagePage,
    UsagePage,
    UsageSummary,
    WebhookAck,
)

from local.parameters import parameter_overrides  # noqa: E402
from local.routes import Route, read_apis, read_routes  # noqa: E402
from local.template import Template  # noqa: E402

# ---------------------------------------------------------------- responses per operation

JSON = "application/json"
TEXT = "text/plain"
CSV = "text/csv"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _ok(model: type[BaseModel] | None, description: str, media: str = JSON) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"} if model is None else _ref(model)
    return {"description": description, "content": {media: {"schema": schema}}}


_ERRORS: dict[int, dict[str, Any]] = {
    400: _ok(Error, "Invalid input (invalid_request or a more specific code); nothing written."),
    401: {
        "description": "Missing or bad token (API Gateway's JWT authorizer).",
        "content": {JSON: {"schema": {"anyOf": [_ref(GatewayMessage), _ref(Error)]}}},
    },
    403: _ok(Error, "forbidden: not an admin."),
    404: {
        "description": "not_found / account_not_found (or no such route).",
        "content": {JSON: {"schema": {"anyOf": [_ref(Error), _ref(GatewayMessage)]}}},
    },
    409: _ok(Error, "The resource's state does not allow it."),
    413: _ok(Error, "payload_too_large: body over 64 KiB."),
    429: {
        **_ok(Error, "too_many_attempts."),
        "headers": {
            "Retry-After": {
                "schema": {"type": "string"},
                "description": "Seconds until another try is counted.",
            }
        },
    },
    502: _ok(Error, "provider_error: the payment provider refused or is unreachable."),
    503: _ok(Error, "The event could not be queued; the provider must deliver it again."),
}
# The POSTs that move quota or money take an Idempotency-Key (API.md, Conventions).
IDEMPOTENT = {
    ("post", "/checkout"),
    ("post", "/referral/transfer"),
    ("post", "/admin/accounts/{user_id}/adjust"),
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
    "description": "One per submission, reused on its retries (per caller, kept 24 h): the "
    "same key and body again return the first result and write nothing.",
}
_IDEMPOTENCY_409 = {
    **_ok(
        Error,
        "idempotency_key_reused: the key was used with another body; "
        "idempotency_key_in_progress: its first request still runs (retry after Retry-After).",
    ),
    "headers": {
        "Retry-After": {
            "schema": {"type": "string"},
            "description": "With idempotency_key_in_progress: seconds before retrying.",
        }
    },
}
_REPLAYED = {
    "Idempotent-Replayed": {
        "schema": {"type": "string", "enum": ["true"]},
        "description": "Present on the stored reply to a repeated Idempotency-Key.",
    }
}
_USER = (401,)  # every authenticated route
_BODY = (400, 413)  # every route with a JSON body

# (method, path) -> success responses and error statuses.
RESPONSES: dict[tuple[str, str], tuple[dict[str, dict[str, Any]], tuple[int, ...]]] = {
    ("post", "/account"): (
        {
            "201": _ok(Account, "Account created."),
            "200": _ok(Account, "The existing account (referral_code ignored)."),
        },
        (*_USER, *_BODY),
    ),
    ("get", "/account"): ({"200": _ok(Account, "The account.")}, (*_USER, 404)),
    ("get", "/account/alerts"): ({"200": _ok(Alerts, "The threshold.")}, (*_USER, 404)),
    ("put", "/account/alerts"): (
        {"200": _ok(Alerts, "The threshold, set (null: none).")},
        (*_USER, *_BODY, 404),
    ),
    ("get", "/account/auto-topup"): (
        {"200": _ok(AutoTopupRule, "The rule, or {enabled: false}.")},
        (*_USER, 404, 502),
    ),
    ("put", "/account/auto-topup"): (
        {"200": _ok(AutoTopupRule, "The rule (no_saved_card: 400 when enabling without one).")},
        (*_USER, *_BODY, 404, 502),
    ),
    ("get", "/ledger"): ({"200": _ok(LedgerPage, "Ledger entries, newest first.")}, (*_USER, 400)),
    ("get", "/usage"): ({"200": _ok(UsagePage, "Usage records, newest first.")}, (*_USER, 400)),
    ("get", "/usage/summary"): (
        {"200": _ok(UsageSummary, "Usage by day, model or key, from the rollups.")},
        (*_USER, 400),
    ),
    ("get", "/ledger/export"): (
        {"200": _ok(None, "The ledger entries of the range as CSV, oldest first.", CSV)},
        (*_USER, 400),
    ),
    ("get", "/grants"): (
        {"200": _ok(GrantPage, "Credit grants, newest first.")},
        (*_USER, 400, 404),
    ),
    ("get", "/limits"): (
        {"200": _ok(SpendLimits, "The caller's spend limits with their windows' spend.")},
        (*_USER, 404),
    ),
    ("put", "/limits/{scope}"): (
        {"200": _ok(SpendLimit, "The limit as set.")},
        (*_USER, *_BODY, 404),
    ),
    ("delete", "/limits/{scope}"): (
        {"200": _ok(LimitDeleted, "The limit is gone (deleted: whether there was one).")},
        (*_USER, 400, 404),
    ),
    ("get", "/admin/accounts/{user_id}/limits"): (
        {"200": _ok(SpendLimits, "Any user's spend limits with their windows' spend.")},
        (*_USER, 403, 404),
    ),
    ("put", "/admin/accounts/{user_id}/limits/{scope}"): (
        {"200": _ok(SpendLimit, "The limit as set (audited).")},
        (*_USER, *_BODY, 403, 404),
    ),
    ("delete", "/admin/accounts/{user_id}/limits/{scope}"): (
        {"200": _ok(LimitDeleted, "The limit is gone (audited).")},
        (*_USER, 400, 403, 404),
    ),
    ("get", "/topup/options"): ({"200": _ok(TopupOptions, "What can be bought, and how.")}, _USER),
    ("post", "/checkout"): (
        {"201": _ok(Order, "A pending order with its pay_url.")},
        (*_USER, *_BODY, 404, 502),
    ),
    ("get", "/topups"): (
        {"200": _ok(OrderPage, "The user's orders, newest first.")},
        (*_USER, 400),
    ),
    ("get", "/topups/{order_id}"): ({"200": _ok(Order, "The order.")}, (*_USER, 404)),
    ("post", "/redeem"): (
        {"200": _ok(Redeemed, "The code's quota was added.")},
        (*_USER, *_BODY, 404, 429),
    ),
    ("post", "/referral/transfer"): (
        {"200": _ok(Transferred, "Moved to the balance.")},
        (*_USER, *_BODY, 404),
    ),
    ("post", "/admin/topups/{order_id}/complete"): (
        {"200": _ok(Order, "The order, paid (credited once).")},
        (*_USER, 403, 404, 409, 413),
    ),
    ("post", "/admin/accounts/{user_id}/adjust"): (
        {"200": _ok(Account, "The account after the adjustment.")},
        (*_USER, *_BODY, 403, 404),
    ),
    ("get", "/admin/accounts/{user_id}/ledger/export"): (
        {"200": _ok(None, "Any user's ledger entries of the range as CSV, oldest first.", CSV)},
        (*_USER, 400, 403, 404),
    ),
    ("post", "/admin/redemption-codes"): (
        {"201": _ok(CodeBatch, "The new codes.")},
        (*_USER, *_BODY, 403),
    ),
    ("get", "/admin/redemption-codes"): (
        {"200": _ok(CodePage, "Codes, newest first.")},
        (*_USER, 400, 403),
    ),
    ("delete", "/admin/redemption-codes/{code_id}"): (
        {"200": _ok(Code, "The code, disabled.")},
        (*_USER, 403, 404),
    ),
    ("get", "/admin/unbilled-usage"): (
        {"200": _ok(UnbilledUsagePage, "Open unbilled usage, newest first.")},
        (*_USER, 400, 403),
    ),
    ("post", "/admin/unbilled-usage/{request_id}/remeter"): (
        {"200": _ok(UnbilledUsage, "Billed now (or before): the item, remetered.")},
        (*_USER, 403, 404, 409, 503),
    ),
    ("post", "/webhooks/stripe"): (
        {"200": _ok(WebhookAck, "Received (queued or ignored).")},
        (400, 413, 503),
    ),
    ("get", "/webhooks/epay"): ({"200": _ok(None, "success", TEXT)}, (413, 503)),
    ("post", "/webhooks/epay"): ({"200": _ok(None, "success", TEXT)}, (413, 503)),
    ("post", "/webhooks/creem"): ({"200": _ok(WebhookAck, "Received.")}, (401, 413, 503)),
    ("post", "/webhooks/waffo"): ({"200": _ok(WebhookAck, 'Signed {"message": ...}.')}, (413, 503)),
}
# EPay's refusal is its own protocol: the text "fail".
_EPAY_FAIL = {"400": _ok(None, "fail (bad sign or not a notification)", TEXT)}

LISTS = {
    ("get", "/ledger"),
    ("get", "/grants"),
    ("get", "/usage"),
    ("get", "/topups"),
    ("get", "/admin/redemption-codes"),
    ("get", "/admin/unbilled-usage"),
}


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": "string", **schema},
        "description": description,
    }


_RANGE = [
    _query("from", "First day, ISO-8601 date (inclusive).", format="date"),
    _query("to", "Last day, ISO-8601 date (inclusive).", format="date"),
]
# Query parameters the handlers read themselves (not from their signatures).
QUERY_PARAMETERS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("get", "/usage"): [
        _query("from", "Created at or after: an ISO-8601 date or time."),
        _query("to", "Created before the end of this ISO-8601 date, or before this time."),
        _query("model", "Only this model.", maxLength=128),
        _query("key_id", "Only usage metered with this API key.", maxLength=128),
    ],
    ("get", "/usage/summary"): [
        *_RANGE,
        _query("group_by", "Bucket by day (default), model or key.", enum=["day", "model", "key"]),
    ],
    ("get", "/ledger/export"): _RANGE,
    ("get", "/admin/accounts/{user_id}/ledger/export"): _RANGE,
}
_PAGE_PARAMETERS = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
    },
    {
        "name": "cursor",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "maxLength": 2048},
        "description": "Opaque: the next_cursor of the previous page of this list, for this "
        "caller (any other cursor is 400 invalid_request).",
    },
]
_WEBHOOK_INPUTS: dict[str, dict[str, Any]] = {
    "stripe": {"header": "Stripe-Signature"},
    "creem": {"header": "creem-signature"},
    "waffo": {"header": "X-SIGNATURE"},
}

# ---------------------------------------------------------------- handlers


def load_template() -> Template:
    return Template(ROOT / "infra" / "template.yaml", parameter_overrides(3000, {}), root=ROOT)


@contextmanager
def _function_path(code_dir: Path) -> Iterator[None]:
    """Import a handler as Lambda would: its directory first; its modules forgotten after."""
    before = set(sys.modules)
    sys.path.insert(0, str(code_dir))
    try:
        yield
    finally:
        sys.path.remove(str(code_dir))
        for name in set(sys.modules) - before:
            module = sys.modules[name]
            if str(getattr(module, "__file__", "") or "").startswith(str(code_dir)):
                del sys.modules[name]


def load_handler(code_dir: Path) -> ModuleType:
    with _function_path(code_dir):
        spec = importlib.util.spec_from_file_location(
            f"handler_{code_dir.name}", code_dir / "app.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def _version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def _route_key(route: Route) -> tuple[str, str]:
    return route.method.lower(), route.path


def build() -> dict[str, Any]:
    template = load_template()
    routes = read_routes(template, read_apis(template))
    by_function: dict[str, list[Route]] = {}
    for route in routes:
        by_function.setdefault(route.function, []).append(route)
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {}
    problems: list[str] = []
    for function_id in sorted(by_function):
        code_dir = template.dir / str(template.function_properties(function_id)["CodeUri"])
        code_dir = code_dir.resolve()
        if not (code_dir / "app.py").is_file():
            continue  # not written yet: documented once its code exists
        router = getattr(load_handler(code_dir), "router", None)
        if router is None or not hasattr(router, "get_openapi_json_schema"):
            problems.append(f"{function_id}: app.py has no Powertools resolver named router")
            continue
        generated = json.loads(router.get_openapi_json_schema(title=TITLE, version=_version()))
        declared = {_route_key(r): r for r in by_function[function_id]}
        found = {
            (method, path) for path, item in generated.get("paths", {}).items() for method in item
        }
        for missing in sorted(set(declared) - found):
            problems.append(f"{function_id}: template route {missing} has no handler route")
        for extra in sorted(found - set(declared)):
            problems.append(f"{function_id}: handler route {extra} is not in the template")
        schemas.update(generated.get("components", {}).get("schemas", {}))
        for path, item in generated.get("paths", {}).items():
            for method, operation in item.items():
                declared_route = declared.get((method, path))
                if declared_route is None:
                    continue
                try:
                    paths.setdefault(path, {})[method] = _operation(
                        method, path, operation, declared_route, function_id
                    )
                except KeyError as exc:
                    problems.append(str(exc))
    if problems:
        raise SystemExit(
            "openapi: " + "\n  ".join(["the handlers and the contract differ:", *problems])
        )
    for model in MODELS:
        definitions = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(definitions.pop("$defs", {}))
        schemas[model.__name__] = definitions
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": _version(),
            "description": "Generated by tools/openapi.py from the handlers (Powertools) and "
            'the contract of API.md. Errors are {"error": {"code", "message"}}.',
        },
        "servers": [{"url": "/"}],
        "paths": {path: paths[path] for path in sorted(paths)},
        "components": {
            "schemas": {},
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The JWT checked by API Gateway's authorizer: `sub` is the "
                    "user; admins have `admin` in `cognito:groups`.",
                }
            },
        },
    }
    document["components"]["schemas"] = _referenced(document, schemas)
    _unique_operation_ids(document)
    return document


def _operation(
    method: str, path: str, operation: dict[str, Any], route: Route, function_id: str
) -> dict[str, Any]:
    key = (method, path)
    if key not in RESPONSES:
        raise KeyError(
            f"{function_id}: {method.upper()} {path} has no responses in "
            "tools/openapi.py RESPONSES (add them from API.md)"
        )
    successes, errors = RESPONSES[key]
    responses = {**successes, **{str(status): _ERRORS[status] for status in errors}}
    if path == "/webhooks/epay":
        responses.update(_EPAY_FAIL)
    if key in IDEMPOTENT:
        responses = {
            status: {**response, "headers": _REPLAYED} if status in successes else response
            for status, response in responses.items()
        }
        responses["409"] = _IDEMPOTENCY_409
    result = {name: value for name, value in operation.items() if name != "responses"}
    result["responses"] = dict(sorted(responses.items()))
    result["tags"] = [function_id]
    parameters = list(operation.get("parameters", []))
    parameters += QUERY_PARAMETERS.get(key, [])
    if key in LISTS:
        parameters += _PAGE_PARAMETERS
    if key in IDEMPOTENT:
        parameters.append(_IDEMPOTENCY_KEY)
    provider = path.removeprefix("/webhooks/") if path.startswith("/webhooks/") else None
    if provider in _WEBHOOK_INPUTS:
        parameters.append(
            {
                "name": _WEBHOOK_INPUTS[provider]["header"],
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "The provider's signature of the raw body.",
            }
        )
        result["requestBody"] = {"content": {JSON: {"schema": {"type": "object"}}}}
    if parameters:
        result["parameters"] = parameters
    result["security"] = [] if route.authorizer is None else [{"bearerAuth": []}]
    return result


def _referenced(document: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """Only the schemas something refers to (directly or through another schema)."""
    wanted: set[str] = set()
    pending = [document["paths"]]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in wanted:
                    wanted.add(name)
                    pending.append(schemas[name])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return {name: schemas[name] for name in sorted(wanted)}


def _unique_operation_ids(document: dict[str, Any]) -> None:
    seen: set[str] = set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            operation_id = operation.get("operationId") or f"{method}_{path}"
            if operation_id in seen:
                operation_id = f"{operation_id}_{method}"
            operation["operationId"] = operation_id
            seen.add(operation_id)


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if openapi.json differs from what the handlers give",
    )
    args = parser.parse_args(argv)
    text = render(build())
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print("openapi.json is out of date: run `make openapi`", file=sys.stderr)
            return 1
        print("openapi.json is up to date")
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(json.loads(text)['paths'])} paths)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
