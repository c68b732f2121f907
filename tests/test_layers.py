"""
The layering rule of the package docstring, checked on the source: the core
(L{txflip.generation}, L{txflip.listen}) imports neither L{txflip.run},
L{txflip.move}, L{txflip.control} nor L{txflip.check}, not even inside a
function or under C{TYPE_CHECKING}.  (Import cycles are another check's.)
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "txflip"
CORE = ("generation", "listen")
ABOVE = ("txflip.run", "txflip.move", "txflip.control", "txflip.check")


def moduleName(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def importsOf(path: Path, package: str = "") -> Iterator[tuple[int, str]]:
    """
    Every module C{path} (of C{package}) imports, wherever the import statement
    is (line, name): C{from txflip import run} names C{txflip.run}; relative
    imports are resolved.
    """
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def packageOf(path: Path) -> str:
    name = moduleName(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def offending(name: str) -> bool:
    return any(name == above or name.startswith(above + ".") for above in ABOVE)


def coreModules() -> list[Path]:
    return sorted(p for sub in CORE for p in (PACKAGE / sub).rglob("*.py"))


def test_coreModulesFound() -> None:
    """
    The check sees the core (a moved folder would make it vacuous).
    """
    names = {moduleName(p) for p in coreModules()}
    assert {"txflip.generation._machine", "txflip.listen._fds"} <= names


@pytest.mark.parametrize("path", coreModules(), ids=moduleName)
def test_coreImportsNothingAbove(path: Path) -> None:
    """
    No module of the core imports a layer above it, at any depth of its code.
    """
    found = [
        f"{moduleName(path)}:{line} imports {name}"
        for line, name in importsOf(path, packageOf(path))
        if offending(name)
    ]
    assert found == []


def test_functionLevelImportsSeen(tmp_path: Path) -> None:
    """
    An import inside a function (or under C{TYPE_CHECKING}), and C{from txflip
    import run}, are seen as imports of C{txflip.run}.
    """
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n"
        "    from txflip.run._channel import SupervisorLink\n"
        "if TYPE_CHECKING:\n"
        "    import txflip.move._out\n"
        "from txflip import control\n"
    )
    names = {name for _, name in importsOf(source) if offending(name)}
    assert names == {
        "txflip.run._channel",
        "txflip.run._channel.SupervisorLink",
        "txflip.move._out",
        "txflip.control",
    }
