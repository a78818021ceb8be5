"""API fuzzing with schemathesis against the session's local stack, from the OpenAPI document
the stack serves (GET /openapi.json, generated from the handlers by tools/openapi.py).

One test per operation of the committed document (schemathesis' own pytest plugin does not
run under this pytest); every operation gets valid and invalid inputs (schemathesis'
positive and negative modes) with an admin's bearer token (so admin routes run their logic,
not only the 403) from an account that exists. Checks: no 5xx, the status code is one the
document declares, and the content type and body match the declared response. Bounded by
FUZZ_EXAMPLES per operation.

The fuzzer's requests leave from a loopback address of their own: its failed redemptions
count against that address, not against 127.0.0.1 that the rest of the suite shares.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.api import loopback_session
from tests.support.stack import ROOT, LocalStack

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def fuzz_session() -> requests.Session:
    return loopback_session()


@pytest.fixture(scope="module")
def api_schema(stack: LocalStack, fuzz_session: requests.Session) -> Any:
    token = stack.token(f"fuzz-{uuid.uuid4().hex[:10]}", admin=True)
    created = fuzz_session.post(
        f"{stack.base_url}/account",
        json={},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert created.status_code == 201, created.text
    schema = schemathesis.openapi.from_url(f"{stack.base_url}/openapi.json")
    schema.config.update(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {token}"}, request_timeout=120
    )
    return schema


def _operations() -> list[tuple[str, str]]:
    document = json.loads((ROOT / "openapi.json").read_text(encoding="utf-8"))
    return [(method.upper(), path) for path, item in document["paths"].items() for method in item]


@pytest.mark.parametrize(("method", "path"), _operations())
def test_api(api_schema: Any, fuzz_session: requests.Session, method: str, path: str) -> None:
    operation = api_schema[path][method]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        # Report what was found; shrinking a slow HTTP example can take minutes.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=cases)
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(session=fuzz_session, checks=CHECKS)

    fuzz()


def test_the_stack_serves_the_committed_document(stack: LocalStack) -> None:
    served = requests.get(f"{stack.base_url}/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.headers["Content-Type"].startswith("application/json")
    document = served.json()
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["paths"]["/webhooks/stripe"]["post"]["security"] == []
    assert document["paths"]["/account"]["get"]["security"] == [{"bearerAuth": []}]
