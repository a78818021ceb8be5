"""billing.facts is the one place of the contract's vocabulary: its values are API.md's
(pinned here, once, as literals), every error the domain raises carries one of its codes,
and it stays importable by the read-only reconciliation (it imports nothing, and
reconciliation reaches no module that writes)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import billing
from billing import errors, facts, ledger
from billing.facts import ErrorCode
from billing.usage import metering

BILLING = Path(billing.__file__).resolve().parent

# The modules that write to DynamoDB (or call a provider): reconciliation must reach none.
WRITERS = {
    "billing.ledger",
    "billing.accounts",
    "billing.idempotency",
    "billing.payments",
    "billing.codes",
    "billing.referral",
    "billing.usage.metering",
    "billing.usage.rollups",
    "billing.usage.unbilled",
    "billing.events",
    "billing.autotopup",
    "billing.ops.adjustments",
    "billing.ops.audit",
    "billing.grant_expiry",
}


def test_the_values_are_the_contracts() -> None:
    assert [k.value for k in facts.EntryKind] == [
        "topup",
        "redeem",
        "referral_reward",
        "referral_transfer",
        "usage",
        "refund",
        "reversal",
        "adjustment",
        "signup_bonus",
        "expiry",
    ]
    assert {s.value for s in facts.OrderStatus} == {
        "pending",
        "paid",
        "failed",
        "expired",
        "refunded",
        "disputed",
    }
    assert {"charged", "reserved", "settled", "released", "expired"} == facts.USAGE_RECORD_STATUSES
    assert {"charged", "settled"} == facts.BILLED_USAGE_STATUSES
    # Metering results (API.md "Usage metering") and the rejected events' errors.
    results = {"charged", "reserved", "settled", "released", "duplicate", "rejected"}
    assert results <= {s.value for s in facts.UsageStatus}
    rejected = {
        "insufficient_quota",
        "limit_exceeded",
        "unknown_model",
        "account_not_found",
        "invalid_event",
    }
    assert rejected <= {c.value for c in ErrorCode}


def test_the_old_names_are_the_same_facts() -> None:
    assert ledger.EntryKind is facts.EntryKind
    assert metering.Status is facts.UsageStatus


def _domain_errors() -> set[type[errors.DomainError]]:
    for module in pkgutil.walk_packages([str(BILLING)], prefix="billing."):
        importlib.import_module(module.name)
    found: set[type[errors.DomainError]] = set()
    pending = [errors.DomainError]
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_every_error_of_the_domain_has_a_code_of_the_facts_and_every_code_is_raised() -> None:
    raised = {cls.code for cls in _domain_errors()}
    assert all(type(code) is str for code in raised)  # plain strings in every body
    # A webhook's refusal is its provider's reply (billing.payments.providers.payload).
    assert raised | {ErrorCode.INVALID_SIGNATURE} == {c.value for c in ErrorCode}


def _billing_imports(module: str) -> set[str]:
    """The billing modules `module` imports directly (any import, anywhere in it)."""
    parts = module.split(".")
    path = BILLING.parent.joinpath(*parts)
    source = (path / "__init__.py") if path.is_dir() else path.with_suffix(".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("billing."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("billing"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                folder = BILLING.parent.joinpath(*candidate.split("."))
                is_module = folder.is_dir() or folder.with_suffix(".py").is_file()
                found.add(candidate if is_module else node.module)
    return {name for name in found if name != "billing"}


def _reached(start: str) -> set[str]:
    seen: set[str] = set()
    pending = [start]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        pending.extend(_billing_imports(module))
        parent = module.rpartition(".")[0]
        if parent != "billing" and module != start:
            # Importing a.b.c runs a/b/__init__.py (the start's own package, its face for
            # others, is not what the start imports).
            pending.append(parent)
    return seen


def _writes(module: str) -> bool:
    return any(module == w or module.startswith(f"{w}.") for w in WRITERS)


def test_facts_imports_nothing() -> None:
    assert _billing_imports("billing.facts") == set()


def test_reconciliation_reaches_no_module_that_writes() -> None:
    reached = _reached("billing.ops.reconciliation")
    assert "billing.facts" in reached
    assert sorted(m for m in reached if _writes(m)) == []


def test_the_writer_check_would_see_a_writer() -> None:
    # The same walk from crediting reaches the ledger: the check above can fail.
    assert _writes("billing.ledger")
    assert "billing.ledger" in _reached("billing.payments.crediting")
