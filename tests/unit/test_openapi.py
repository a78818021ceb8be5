"""openapi.json (committed, served by the local stack) is what tools/openapi.py generates from
the handlers now, and it documents every route of API.md whose function exists; the build
fails when a route declares no responses or its security disagrees with the template."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from billing.api_docs import BEARER, answers
from billing.api_models_referral import Transferred
from billing.http import checked

from tests.support.stack import ROOT
from tools import openapi

# The routes API.md names (method, path).
API_MD_ROUTES = {
    ("post", "/account"),
    ("get", "/account"),
    ("get", "/account/alerts"),
    ("put", "/account/alerts"),
    ("get", "/account/auto-topup"),
    ("put", "/account/auto-topup"),
    ("get", "/ledger"),
    ("get", "/usage"),
    ("get", "/usage/summary"),
    ("get", "/ledger/export"),
    ("get", "/grants"),
    ("get", "/topup/options"),
    ("post", "/checkout"),
    ("get", "/topups"),
    ("get", "/topups/{order_id}"),
    ("post", "/redeem"),
    ("post", "/admin/redemption-codes"),
    ("get", "/admin/redemption-codes"),
    ("delete", "/admin/redemption-codes/{code_id}"),
    ("post", "/referral/transfer"),
    ("post", "/admin/topups/{order_id}/complete"),
    ("post", "/admin/accounts/{user_id}/adjust"),
    ("get", "/admin/accounts/{user_id}/ledger/export"),  # an extension (README)
    ("get", "/admin/unbilled-usage"),
    ("get", "/limits"),
    ("put", "/limits/{scope}"),
    ("delete", "/limits/{scope}"),
    ("get", "/admin/accounts/{user_id}/limits"),
    ("put", "/admin/accounts/{user_id}/limits/{scope}"),
    ("delete", "/admin/accounts/{user_id}/limits/{scope}"),
    ("post", "/admin/unbilled-usage/{request_id}/remeter"),
    ("post", "/webhooks/stripe"),
    ("get", "/webhooks/epay"),
    ("post", "/webhooks/epay"),
    ("post", "/webhooks/creem"),
    ("post", "/webhooks/waffo"),
}


def test_the_committed_document_is_what_the_handlers_generate() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "openapi.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr + "\n(run `make openapi`)"


def test_it_documents_every_route_of_the_contract_with_its_errors() -> None:
    document = json.loads((ROOT / "openapi.json").read_text())
    documented = {(m, p) for p, item in document["paths"].items() for m in item}
    assert documented == API_MD_ROUTES
    for path, item in document["paths"].items():
        for method, operation in item.items():
            statuses = set(operation["responses"])
            assert statuses & {"200", "201"}, (method, path)
            public = path.startswith("/webhooks/")
            assert operation["security"] == ([] if public else [{"bearerAuth": []}])
            if not public:
                assert "401" in statuses, (method, path)
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body and not public:
                assert {"400", "413"} <= statuses, (method, path)


# ---------------------------------------------------------------- the cross-check can fail


def _build_with(
    monkeypatch: pytest.MonkeyPatch, change: Callable[[Any], None]
) -> SystemExit | None:
    """tools/openapi.py's build(), with `change` applied to every route of every function
    (before any document is generated, so the change is what Powertools sees)."""
    real = openapi.load_handler

    def load(code_dir: Path) -> Any:
        module = real(code_dir)
        for route in module.router._static_routes + module.router._dynamic_routes:
            change(route)
        return module

    monkeypatch.setattr(openapi, "load_handler", load)
    try:
        openapi.build()
    except SystemExit as failure:
        return failure
    return None


def _only(method: str, path: str, change: Callable[[Any], None]) -> Callable[[Any], None]:
    def apply(route: Any) -> None:
        if route.method == method and route.openapi_path == path:
            route._dependant = None  # the responses feed the route's cached dependant
            change(route)

    return apply


def test_the_routes_as_they_are_build() -> None:
    document = openapi.build()
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for item in document["paths"].values():
        for operation in item.values():
            assert "422" not in operation["responses"]  # make_router answers 400


def test_a_route_without_responses_fails_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    failure = _build_with(
        monkeypatch, _only("GET", "/ledger", lambda route: setattr(route, "responses", None))
    )
    assert failure is not None and "GET /ledger declares no responses" in str(failure.code)


def test_a_route_with_errors_only_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    failure = _build_with(
        monkeypatch,
        _only("GET", "/topups", lambda route: setattr(route, "responses", answers(400, 401))),
    )
    assert failure is not None and "GET /topups declares no responses" in str(failure.code)


def test_an_authorized_route_without_bearer_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    failure = _build_with(
        monkeypatch, _only("POST", "/checkout", lambda route: setattr(route, "security", None))
    )
    assert failure is not None
    assert "POST /checkout is behind the JWT authorizer" in str(failure.code)


def test_a_webhook_with_security_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    failure = _build_with(
        monkeypatch,
        _only("POST", "/webhooks/stripe", lambda route: setattr(route, "security", BEARER)),
    )
    assert failure is not None
    assert "POST /webhooks/stripe has no authorizer in the template" in str(failure.code)


def test_a_body_its_model_does_not_describe_is_sent_but_logged_and_counted(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "QuotaTopupTest")
    body = {"aff_quota": 1, "quota": 2**60}
    assert checked(Transferred, body) == body  # ints beyond 2**53 stay ints
    assert "ResponseSchemaMismatch" not in capsys.readouterr().out and not caplog.records
    # A field the model lacks, and a value it would render otherwise: the write behind the
    # answer has committed, so the body goes out as it is; the mismatch is an error log line
    # naming the fields (never their values) and one ResponseSchemaMismatch count (EMF).
    for wrong, field in (
        ({**body, "undeclared": "secret-code"}, "undeclared"),
        ({**body, "quota": "2"}, "quota"),
    ):
        caplog.clear()
        assert checked(Transferred, wrong) == wrong
        (error,) = [r for r in caplog.records if r.levelname == "ERROR"]
        assert error.response_model == "Transferred"  # type: ignore[attr-defined]
        assert field in error.fields  # type: ignore[attr-defined]
        assert "secret-code" not in str(error.__dict__)
        documents = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
        (emitted,) = [d for d in documents if "ResponseSchemaMismatch" in d]
        assert emitted["ResponseSchemaMismatch"] in (1, [1], 1.0, [1.0])
