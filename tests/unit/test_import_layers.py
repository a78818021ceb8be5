"""The domain's imports run downwards (DESIGN.md, Layout).

billing/ holds the shared base at its root and one package per subdomain. The rules:
- nothing in the base imports a subdomain;
- a subdomain imports another only where SUBDOMAIN_DEPENDENCIES allows it (a DAG, so no
  two subdomains lean on each other), and only through that subdomain's face: the names its
  `__init__.py` lists in `__all__`, imported as `from billing.<subdomain> import <name>`;
- nothing in the domain imports a handler (functions/) or the local stack (local/).

Every import counts: module level, inside functions (lazy imports) and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

BILLING = Path(__file__).resolve().parents[2] / "layers" / "common" / "billing"

# Who may lean on whom. Add an edge only with a reason; never make a cycle.
SUBDOMAIN_DEPENDENCIES: dict[str, frozenset[str]] = {
    "payments": frozenset({"referral", "ops"}),  # rebates join a credit; admin completion audited
    "codes": frozenset({"ops"}),  # code administration is audited
    "referral": frozenset(),
    "usage": frozenset(),
    "ops": frozenset(),
    "events": frozenset({"autotopup"}),  # the ledger's stream also drives auto top-up
    "autotopup": frozenset({"payments"}),  # an auto top-up is an off-session Stripe order
}


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.reason}"


def subdomains(root: Path = BILLING) -> set[str]:
    return {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}


def face(subdomain: str, root: Path = BILLING) -> set[str]:
    """The names `billing/<subdomain>/__init__.py` lists in `__all__`."""
    tree = ast.parse((root / subdomain / "__init__.py").read_text())
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        if "__all__" in targets and node.value is not None:
            return set(ast.literal_eval(node.value))
    return set()


def module_name(path: Path, root: Path = BILLING) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_submodule(package: str, name: str, root: Path) -> bool:
    folder = root.parent.joinpath(*package.split("."))
    return (folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file()


def violations(module: str, source: str, root: Path = BILLING) -> list[Violation]:
    """What breaks the rules in one module of the domain (`module` is its dotted name)."""
    packages = subdomains(root)
    parts = module.split(".")
    home = parts[1] if len(parts) >= 2 and parts[1] in packages else None
    found: list[Violation] = []

    def check(line: int, target: str, names: list[str] | None) -> None:
        """`target` imported (names: the `from target import ...` names, else None)."""
        top = target.split(".")[0]
        if top in ("functions", "local"):
            found.append(Violation(module, line, f"the domain imports {target}"))
            return
        if top != "billing" or target == "billing":
            return
        other = target.split(".")[1]
        if other not in packages or other == home:
            return
        if home is None:
            found.append(Violation(module, line, f"the base imports the subdomain {target}"))
            return
        if other not in SUBDOMAIN_DEPENDENCIES.get(home, frozenset()):
            found.append(Violation(module, line, f"{home} may not depend on {other} ({target})"))
            return
        if target != f"billing.{other}" or names is None:
            found.append(
                Violation(module, line, f"{target}: use the face, from billing.{other} import ...")
            )
            return
        outside = [n for n in names if n not in face(other, root)]
        if outside:
            found.append(
                Violation(module, line, f"{sorted(outside)} are not on billing.{other}'s face")
            )

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(node.lineno, alias.name, None)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [a.name for a in node.names]
            subs = [n for n in names if _is_submodule(node.module, n, root)]
            for name in subs:
                check(node.lineno, f"{node.module}.{name}", None)
            rest = [n for n in names if n not in subs]
            if rest:
                check(node.lineno, node.module, rest)
    return found


def test_the_domain_has_its_subdomains() -> None:
    assert subdomains() == set(SUBDOMAIN_DEPENDENCIES)


def test_every_import_of_the_domain_runs_downwards() -> None:
    found = [
        violation
        for path in sorted(BILLING.rglob("*.py"))
        for violation in violations(module_name(path), path.read_text())
    ]
    assert not found, "\n".join(map(str, found))


def test_every_name_on_a_face_exists() -> None:
    for subdomain in SUBDOMAIN_DEPENDENCIES:
        package = __import__(f"billing.{subdomain}", fromlist=["__all__"])
        missing = [name for name in face(subdomain) if not hasattr(package, name)]
        assert not missing, f"billing.{subdomain}.__all__ names {missing}, which it lacks"


def test_the_dependencies_between_subdomains_have_no_cycle() -> None:
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in visiting, f"cycle: {' -> '.join((*path, node))}"
        if node in done:
            return
        visiting.add(node)
        for nxt in SUBDOMAIN_DEPENDENCIES[node]:
            visit(nxt, (*path, node))
        visiting.discard(node)
        done.add(node)

    for node in SUBDOMAIN_DEPENDENCIES:
        visit(node, ())


@pytest.mark.parametrize(
    ("module", "source", "reason"),
    [
        ("billing.ledger", "from billing.payments import orders\n", "the base imports"),
        ("billing.accounts", "import billing.usage.metering\n", "the base imports"),
        ("billing.money", "def f():\n    from billing.referral import transfer\n", "the base"),
        ("billing.usage.metering", "from billing.payments import orders\n", "may not depend"),
        ("billing.payments.crediting", "from billing.referral import rewards\n", "use the face"),
        ("billing.payments.crediting", "from billing.ops.audit import record\n", "use the face"),
        ("billing.payments.orders", "from billing.referral import _private\n", "not on billing"),
        ("billing.codes.admin", "import local.aws\n", "the domain imports local"),
        ("billing.ops.audit", "from functions.account import app\n", "the domain imports"),
    ],
)
def test_the_rules_catch_a_wrong_import(module: str, source: str, reason: str) -> None:
    found = violations(module, source)
    assert found and reason in found[0].reason, found


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("billing.payments.crediting", "from billing.referral import credit_changes\n"),
        ("billing.payments.crediting", "from billing.payments import orders\n"),
        ("billing.usage.metering", "from billing import clock, ledger\n"),
        ("billing.codes.redemption", "from billing.codes import plaintext, ratelimit\n"),
        ("billing.ledger", "from billing.models import Account\n"),
    ],
)
def test_the_rules_allow_what_runs_downwards(module: str, source: str) -> None:
    assert violations(module, source) == []
