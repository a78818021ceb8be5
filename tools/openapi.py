"""Generate the API's OpenAPI document (openapi.json at the repo root) from the handlers.

    .venv/bin/python tools/openapi.py            # (re)write openapi.json  (make openapi)
    .venv/bin/python tools/openapi.py --check    # exit 1 if openapi.json is not up to date

Every HTTP function of infra/template.yaml whose code exists is imported and its Powertools
resolver (`router` in app.py) gives the operations: paths, methods, path parameters and request
bodies (the handlers' pydantic models, strict, unknown fields refused). The routes of each
resolver must be exactly the template's HttpApi routes of that function, or this fails.

Each route declares what it answers (billing.api_docs: `responses=` with the response models
of billing.api_models, the ones the handlers render with; `security=`; its query parameters
and headers as handler parameters), so this only merges the functions' documents and checks
them against the template: a route behind the JWT authorizer must require bearerAuth, one
without (a webhook) must require nothing, and every route must declare its responses, or
this fails. The local stack serves the file at GET /openapi.json.
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

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "openapi.json"
TITLE = "Quota & Top-up API"

sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]

from aws_lambda_powertools.event_handler.openapi.constants import (  # noqa: E402
    DEFAULT_OPENAPI_RESPONSE_DESCRIPTION,
)
from billing.api_docs import BEARER  # noqa: E402

from local.parameters import parameter_overrides  # noqa: E402
from local.routes import Route, read_apis, read_routes  # noqa: E402
from local.template import Template  # noqa: E402

# Powertools documents its own 422 for request validation; make_router answers those errors
# with the contract's 400 (every route that validates anything declares it).
_POWERTOOLS_VALIDATION_STATUS = "422"

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
        sys.modules[spec.name] = module  # as an import would (dataclasses look themselves up)
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[spec.name]
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
    security_schemes: dict[str, Any] = {}
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
        components = generated.get("components", {})
        problems += _merge(schemas, components.get("schemas", {}), function_id, "schema")
        problems += _merge(
            security_schemes, components.get("securitySchemes", {}), function_id, "scheme"
        )
        for path, item in generated.get("paths", {}).items():
            for method, operation in item.items():
                declared_route = declared.get((method, path))
                if declared_route is None:
                    continue
                problems += _check(method, path, operation, declared_route, function_id)
                paths.setdefault(path, {})[method] = _operation(operation, function_id)
    if problems:
        raise SystemExit(
            "openapi: " + "\n  ".join(["the handlers and the template differ:", *problems])
        )
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
        "components": {"schemas": {}, "securitySchemes": security_schemes},
    }
    document["components"]["schemas"] = _referenced(document, schemas)
    _unique_operation_ids(document)
    return _integral(document)


def _merge(into: dict[str, Any], more: dict[str, Any], function_id: str, kind: str) -> list[str]:
    """Components of one function's document; a name two functions give different bodies is
    a problem (the merged document could only show one)."""
    problems = []
    for name, value in more.items():
        if name in into and into[name] != value:
            problems.append(f"{function_id}: {kind} {name} differs from another function's")
        into.setdefault(name, value)
    return problems


def _check(
    method: str, path: str, operation: dict[str, Any], route: Route, function_id: str
) -> list[str]:
    """What the route declares, against the template: responses (with a success), and the
    JWT authorizer exactly where the route requires bearerAuth."""
    where = f"{function_id}: {method.upper()} {path}"
    problems = []
    responses = {
        status: response
        for status, response in operation.get("responses", {}).items()
        if status != _POWERTOOLS_VALIDATION_STATUS
    }
    declared = [
        status
        for status, response in responses.items()
        if response.get("description") != DEFAULT_OPENAPI_RESPONSE_DESCRIPTION
    ]
    if not declared or not any(status.startswith("2") for status in declared):
        problems.append(f"{where} declares no responses (responses=answers(ok(...), ...))")
    security = operation.get("security") or []
    if route.authorizer is not None and security != BEARER:
        problems.append(f"{where} is behind the JWT authorizer: it must declare security=BEARER")
    if route.authorizer is None and security:
        problems.append(f"{where} has no authorizer in the template: it must declare no security")
    return problems


def _operation(operation: dict[str, Any], function_id: str) -> dict[str, Any]:
    result = dict(operation)
    result["responses"] = {
        status: response
        for status, response in operation["responses"].items()
        if status != _POWERTOOLS_VALIDATION_STATUS
    }
    result["tags"] = [function_id]
    result["security"] = operation.get("security") or []  # none declared: public
    return result


def _integral(node: Any) -> Any:
    """Powertools' OpenAPI models keep numeric bounds as floats: 100.0 is shown as 100."""
    if isinstance(node, dict):
        return {key: _integral(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_integral(value) for value in node]
    if isinstance(node, float) and node.is_integer():
        return int(node)
    return node


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
