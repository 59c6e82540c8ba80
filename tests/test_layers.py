"""Layers point down, and no two modules import each other: read from the source (ast), so function-level imports
count too, as they run as soon as the function is called. ``if TYPE_CHECKING:`` imports never run and are skipped.

The layers, bottom up: ``errors``, ``atomic``, ``serialize`` -> ``models``, ``data`` -> ``train`` -> ``analysis``
-> ``cli``. models/ and data/ import nothing from train/ or analysis/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "cnnzoo"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _runs(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """False for an import under ``if TYPE_CHECKING:`` (it never runs)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return False
    return True


def imports(name: str) -> set[str]:
    """The cnnzoo modules ``name`` imports anywhere in its source (``from pkg import mod`` counts as ``pkg.mod``
    when that is a module)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if not _runs(node, parents):
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports(name) for name in MODULES}


@pytest.mark.parametrize("low", ["cnnzoo.models", "cnnzoo.data"])
def test_models_and_data_import_nothing_from_train_or_analysis(low):
    wrong = {
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        if m == low or m.startswith(low + ".")
        for t in targets
        if t.startswith(("cnnzoo.train", "cnnzoo.analysis"))
    }
    assert not wrong, sorted(wrong)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of two or more modules (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_the_checks_can_fail():
    """The cycle finder finds a cycle and the graph holds function-level imports (weights.py's safe loader)."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "cnnzoo.serialize" in GRAPH["cnnzoo.models.weights"]
