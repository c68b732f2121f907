"""
No import cycle between txflip's modules, counting the imports inside functions.

A function-level import hides a cycle from Python (it runs after both modules are
loaded), and one under C{if TYPE_CHECKING:} never runs at all, but neither hides it
from a reader: the flow still goes back and forth (the drain's tracker called the
mover, the mover called the tracker back).  So every C{import} statement counts,
wherever it stands.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import txflip

#: The package as Python imports it: the checkout, or an installed wheel.
PACKAGE = Path(txflip.__file__).resolve().parent


def moduleName(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def importedModules(path: Path, modules: set[str]) -> set[str]:
    """
    The txflip modules that C{path} imports, anywhere in it.
    """
    found = set()
    for node in _imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            assert node.level == 0, f"{path}: relative import"
            base = node.module or ""
            # "from txflip.generation import _handoff" imports a module.
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "txflip":
                found.add(name)
    if path.is_relative_to(PACKAGE):
        found.discard(moduleName(path))
    return found


def importGraph() -> dict[str, set[str]]:
    paths = {moduleName(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: importedModules(path, modules) for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """
    The strongly connected components of more than one module (Tarjan's).
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for after in graph.get(node, ()):
            if after not in index:
                visit(after)
                low[node] = min(low[node], low[after])
            elif after in stack:
                low[node] = min(low[node], index[after])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_noImportCycle() -> None:
    """
    No two txflip modules import each other, directly or through others.
    """
    assert cycles(importGraph()) == []


def test_theCheckSeesCyclesAndFunctionLevelImports(tmp_path: Path) -> None:
    """
    The check itself: a cycle closed by an import inside a function is found, and
    so is one closed under C{TYPE_CHECKING}.
    """
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    import a\n")
    (tmp_path / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\n"
    )
    modules = {"a", "b", "c"}
    graph = {
        name: {
            n
            for node in _imports(ast.parse((tmp_path / f"{name}.py").read_text()))
            if isinstance(node, ast.Import)
            for n in (alias.name for alias in node.names)
            if n in modules
        }
        for name in modules
    }
    assert graph == {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert cycles(graph) == [["a", "b"]]
    (tmp_path / "a.py").write_text("import c\n")
    graph["a"] = {"c"}
    assert cycles(graph) == [["a", "c"]]
