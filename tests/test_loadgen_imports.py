"""The load generator's modules import each other without a circle (issue 20
item 5): `htmlreport` ↔ `report` ↔ `wshtml` once did, which made the order
of imports matter and hid which module owns what.

The graph is read from the source (AST), not by importing, so a circle is
found even where an import deferred into a function dodges it at run time:
such an import still ties the two modules together both ways.  Imports under
`if TYPE_CHECKING:` are for annotations only and run never, so they are left
out."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

SRC = Path(__file__).resolve().parent.parent / "src"
LOADGEN = SRC / "beastnet" / "loadgen"

#: The report modules issue 20 found in a circle, and their neighbours:
#: each must be in the graph, so a rename cannot make the test vacuous.
REPORT_MODULES = ("htmlreport", "report", "htmlkit", "compare", "outputs", "ws.htmlpage")


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST, package: str) -> list[tuple[str, Optional[str]]]:
    """(module, name) pairs imported anywhere in `tree`, outside TYPE_CHECKING."""
    found: list[tuple[str, Optional[str]]] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                for other in child.orelse:
                    walk(other)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, None) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")[:len(package.split(".")) - (child.level - 1)]
                    base = ".".join(parent + ([child.module] if child.module else []))
                found.extend((base, alias.name) for alias in child.names)
            walk(child)

    walk(tree)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module(p): p for p in LOADGEN.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in paths.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        edges = set()
        for base, name in _imports(ast.parse(path.read_text()), package):
            # `from pkg import sub` imports the module pkg.sub; a package's
            # __init__ runs before any of its modules anyway, so it is not an
            # edge of its own children.
            target = f"{base}.{name}" if name and f"{base}.{name}" in paths else base
            if target in paths and target != mod and not mod.startswith(target + "."):
                edges.add(target)
        graph[mod] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_report_modules_and_their_imports():
    graph = _graph()
    for name in REPORT_MODULES:
        assert f"beastnet.loadgen.{name}" in graph, name
    # htmlreport draws with htmlkit: the reader follows real imports.
    assert "beastnet.loadgen.htmlkit" in graph["beastnet.loadgen.htmlreport"]


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_loadgen_modules_import_each_other_without_a_circle():
    cycles = _cycles(_graph())
    assert not cycles, f"import circles in beastnet.loadgen: {cycles}"
