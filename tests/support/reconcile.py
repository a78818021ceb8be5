"""Reconciliation of a local stack's tables (billing.ops.reconciliation), for the end of a session
and for tests that prove nothing was lost or doubled."""

from __future__ import annotations

from billing.ops.reconciliation import Report, Tables, reconcile

from tests.support.stack import LocalStack


def stack_tables(stack: LocalStack) -> Tables:
    tables = stack.health()["tables"]
    return Tables(
        accounts=tables["AccountsTable"],
        ledger=tables["LedgerTable"],
        orders=tables["OrdersTable"],
        usage=tables["UsageTable"],
        codes=tables["RedemptionCodesTable"],
    )


def reconcile_stack(stack: LocalStack, *, pause: float = 0.5) -> Report:
    return reconcile(stack.boto3_client("dynamodb"), stack_tables(stack), pause=pause)


def assert_reconciled(stack: LocalStack) -> Report:
    """Every balance equals its ledger, every order its entries; the differences otherwise."""
    report = reconcile_stack(stack)
    listing = "\n".join(str(d) for d in report.differences[:50])
    assert report.clean, f"reconciliation found {len(report.differences)} differences:\n{listing}"
    return report
