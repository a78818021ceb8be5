"""Shared fixtures: the local stack on the real template, started once per session.

When the session ends, two checks fail the run (as an error at teardown):
- IAM: every call any function made during the suite was allowed by its own policies in
  infra/template.yaml (the stack enforces them as AWS does; a refusal here is a refusal in
  AWS, see GET /_local/iam). LocalStack.stop makes this check for every stack the tests start.
- Reconciliation (billing.ops.reconciliation): every balance must equal its ledger and every order
  its ledger entries, after everything the whole suite did to them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.reconcile import assert_reconciled
from tests.support.stack import LocalStack


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    local = LocalStack("session")
    local.start()
    try:
        yield local
        assert_reconciled(local)
    finally:
        local.stop()  # fails on any AccessDenied of the suite (as every stack's stop does)


@pytest.fixture
def user_id() -> str:
    """A user id no other test uses (the session's stack is shared)."""
    return f"user-{uuid.uuid4().hex[:12]}"
