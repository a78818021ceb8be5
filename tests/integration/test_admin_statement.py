"""An admin exports any user's statement: the same CSV the user downloads (one writer), through
GET /admin/accounts/{user_id}/ledger/export and the admin CLI (`tools.admin ledger export`);
non-admins are refused, unknown users are 404, bad ranges 400, and each export is audited."""

from __future__ import annotations

import csv
import io
import stat
from pathlib import Path

import pytest

from tests.support.stack import LocalStack
from tools import admin as admin_cli


def user_with_entries(stack: LocalStack, user_id: str) -> str:
    token = stack.token(user_id)
    assert stack.request("POST", "/account", token=token, json={}).status_code in (200, 201)
    admin = stack.token("admin-statements", admin=True)
    for index, delta in enumerate((5000, -1200, 300)):
        response = stack.request(
            "POST",
            f"/admin/accounts/{user_id}/adjust",
            token=admin,
            json={"delta": delta, "reason": f"=HYPERLINK(step {index})"},
            headers={"idempotency-key": f"{user_id}-{index}"},
        )
        assert response.status_code == 200, response.text
    return token


def test_an_admin_gets_the_users_own_statement(stack: LocalStack, user_id: str) -> None:
    token = user_with_entries(stack, user_id)
    own = stack.request("GET", "/ledger/export", token=token)
    admin = stack.token("admin-statements", admin=True)
    theirs = stack.request("GET", f"/admin/accounts/{user_id}/ledger/export", token=admin)
    assert theirs.status_code == 200, theirs.text
    assert theirs.headers["content-type"].startswith("text/csv")
    assert "attachment" in theirs.headers["content-disposition"]
    assert theirs.text == own.text
    rows = list(csv.DictReader(io.StringIO(theirs.text)))
    assert sum(int(row["delta"]) for row in rows) == 4100
    assert len(rows) == 3


def test_the_cli_writes_the_statement_to_a_new_private_file(
    stack: LocalStack, user_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = user_with_entries(stack, user_id)
    out = tmp_path / "statement.csv"
    argv = ["ledger", "export", "--user", user_id, "--out", str(out), "--api-url", stack.base_url]
    argv += ["--token", stack.token("admin-cli", admin=True)]
    assert admin_cli.main(argv) == 0
    own = stack.request("GET", "/ledger/export", token=token)
    assert out.read_bytes() == own.content
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "3 ledger entries" in capsys.readouterr().out
    assert admin_cli.main(argv) == 1  # never overwrites a file
    assert "exists" in capsys.readouterr().err


def test_non_admins_unknown_users_and_bad_ranges_are_refused(
    stack: LocalStack, user_id: str
) -> None:
    token = user_with_entries(stack, user_id)
    path = f"/admin/accounts/{user_id}/ledger/export"
    refused = stack.request("GET", path, token=token)
    assert refused.status_code == 403
    admin = stack.token("admin-statements", admin=True)
    unknown = stack.request("GET", "/admin/accounts/nobody-here/ledger/export", token=admin)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "account_not_found"
    for query in ({"from": "2026-02-30"}, {"from": "2026-03-02", "to": "2026-03-01"}, {"x": "1"}):
        bad = stack.request("GET", path, token=admin, params=query)
        assert bad.status_code == 400, (query, bad.text)
        assert bad.json()["error"]["code"] == "invalid_request"
