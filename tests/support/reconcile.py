"""Reconciliation of a local stack's tables (billing.ops.reconciliation), for the end of a session
and for tests that prove nothing was lost or doubled."""

from __future__ import annotations

import json

from billing.ops.reconciliation import Difference, Options, Report, Tables, check_account, reconcile

from tests.support.stack import ROOT, LocalStack

# The local stack is seeded with settings/local.json.
_SETTINGS = json.loads((ROOT / "settings" / "local.json").read_text())


def stack_tables(stack: LocalStack) -> Tables:
    tables = stack.health()["tables"]
    return Tables(
        accounts=tables["AccountsTable"],
        ledger=tables["LedgerTable"],
        orders=tables["OrdersTable"],
        usage=tables["UsageTable"],
        codes=tables["RedemptionCodesTable"],
        usage_shards=_SETTINGS["usage"]["user_shards"],
    )


_LOCAL = {"credentials": ("testing", "testing"), "region": "us-east-1"}


def check_stack_account(stack: LocalStack, user_id: str) -> list[Difference]:
    """The per-account checks of one user of the stack, from fresh reads."""
    return check_account(stack_tables(stack), user_id, endpoint=stack.aws_endpoint, **_LOCAL)


def reconcile_stack(stack: LocalStack, *, pause: float = 2.5, rechecks: int = 2) -> Report:
    return reconcile(
        stack_tables(stack),
        Options(pause=pause, rechecks=rechecks),
        endpoint=stack.aws_endpoint,
        **_LOCAL,
    )


def assert_reconciled(stack: LocalStack) -> Report:
    """Every balance equals its ledger, every order its entries; the differences otherwise."""
    report = reconcile_stack(stack)
    listing = "\n".join(str(d) for d in report.differences[:50])
    assert report.clean, f"reconciliation found {len(report.differences)} differences:\n{listing}"
    assert not report.unverified, [str(d) for d in report.unverified[:50]]
    return report
