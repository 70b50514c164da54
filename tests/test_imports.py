"""The import graph of ripsvc has no circles, but the one docs/design.md argues.

Counted are imports at the top of a module, inside functions (run-time imports) and under
TYPE_CHECKING (a reader still has to hold both modules in mind). The balancer's modules refer
to each other's classes for their types (docs/design.md, "The balancer: one state machine"):
that circle is allowed as long as it is made of TYPE_CHECKING imports only.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: Circles argued in docs/design.md; each must vanish without its TYPE_CHECKING imports.
ARGUED = [{"ripsvc.balancer.client", "ripsvc.balancer.core", "ripsvc.balancer.exchange",
           "ripsvc.balancer.pool", "ripsvc.balancer.upstream", "ripsvc.balancer.tunnel",
           "ripsvc.balancer.static", "ripsvc.balancer.compress"}]


def modules() -> dict[str, Path]:
    found = {}
    for path in (REPO / "ripsvc").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str]]:
    """(imported module, how: "top", "lazy" or "type") for each ripsvc import of `path`."""
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST, how: str) -> None:
        for child in ast.iter_child_nodes(node):
            kind = how
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                kind = "type"
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and how == "top":
                kind = "lazy"
            if isinstance(child, ast.Import):
                found.extend((alias.name, kind) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                for alias in child.names:
                    full = f"{child.module}.{alias.name}"
                    found.append((full if full in known else child.module, kind))
            visit(child, kind)

    visit(ast.parse(path.read_text()), "top")
    return [(target, how) for target, how in found if target in known and target != name]


def circles(kinds: set[str]) -> list[set[str]]:
    """The strongly connected components (more than one module) of the graph (Tarjan)."""
    known = modules()
    graph = {name: sorted({t for t, how in imports(name, path, known) if how in kinds})
             for name, path in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in graph:
        if node not in index:
            connect(node)
    return found


def test_no_import_circles_but_the_argued_ones() -> None:
    assert sorted(map(sorted, circles({"top", "lazy", "type"}))) == \
        sorted(map(sorted, ARGUED))


def test_no_circle_at_run_time() -> None:
    assert circles({"top", "lazy"}) == []
