"""Shared fixtures: the local stack on the real template, started once per session.

When the session ends, two checks fail the run (as an error at teardown):
- IAM: every call any function made during the suite was allowed by its own policies in
  infra/template.yaml (the stack enforces them as AWS does; a refusal here is a refusal in
  AWS, see GET /_local/iam).
- Reconciliation (billing.ops.reconciliation): every balance must equal its ledger and every order
  its ledger entries, after everything the whole suite did to them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.reconcile import assert_reconciled
from tests.support.stack import LocalStack


def access_denied_problems(stack: LocalStack) -> list[str]:
    report = stack.iam()
    if not report.get("enforced"):
        return ["the session stack does not enforce IAM"]
    if not report["denied_total"]:
        # the log says the same (one line per refusal)
        return ["AccessDenied in the stack's log"] if "IAM AccessDenied" in stack.log_text() else []
    lines = [
        f"{d['time']} {d['function']}: {d['action']} on {d['resource']} ({d['operation']})"
        for d in report["denials"][:50]
    ]
    return [
        f"IAM refused {report['denied_total']} calls of the functions during the suite "
        "(grant what the code needs in infra/template.yaml, least privilege):\n" + "\n".join(lines)
    ]


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    local = LocalStack("session")
    local.start()
    try:
        yield local
        problems = access_denied_problems(local)
        try:
            assert_reconciled(local)
        except AssertionError as exc:
            problems.append(str(exc))
        assert not problems, "\n\n".join(problems)
    finally:
        local.stop()


@pytest.fixture
def user_id() -> str:
    """A user id no other test uses (the session's stack is shared)."""
    return f"user-{uuid.uuid4().hex[:12]}"
