"""openapi.json (committed, served by the local stack) is what tools/openapi.py generates from
the handlers now, and it documents every route of API.md whose function exists."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.stack import ROOT

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
