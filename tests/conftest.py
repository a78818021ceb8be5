"""Shared fixtures: the local stack on the real template, started once per session.

When the session ends, the stack's tables are reconciled (billing.ops.reconciliation): every
balance must equal its ledger and every order its ledger entries, after everything the whole
suite did to them; a difference fails the run (as an error at teardown).
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
        local.stop()


@pytest.fixture
def user_id() -> str:
    """A user id no other test uses (the session's stack is shared)."""
    return f"user-{uuid.uuid4().hex[:12]}"
