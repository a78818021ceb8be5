"""The local stack's modules import each other without a circle (TYPE_CHECKING imports
included: a circle hidden behind it is still two modules that cannot be read apart)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.stack import ROOT

LOCAL = ROOT / "local"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def local_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("local."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("local"):
            found.add(node.module)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in LOCAL.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = {target for target in local_imports(path) if target in modules} - {name}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_local_stack_has_no_import_cycle() -> None:
    edges = graph()
    assert "local.gateway" in edges and "local.stack" in edges
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges) or [])


def test_a_cycle_would_be_found() -> None:
    edges = graph()
    edges["local.gateway"] = edges["local.gateway"] | {"local.stack"}
    assert find_cycle(edges) is not None
