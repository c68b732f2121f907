"""
The layering rule of the package docstring, checked on the source: the core
(L{txflip.generation}, L{txflip.listen}) imports neither L{txflip.run},
L{txflip.move}, L{txflip.control} nor L{txflip.check}, not even inside a
function or under C{TYPE_CHECKING}.  (The imports are read by
L{tests.test_imports}, which also checks that there is no cycle.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_imports import PACKAGE, importedModules, importGraph, moduleName

CORE = ("txflip.generation", "txflip.listen")
ABOVE = ("txflip.run", "txflip.move", "txflip.control", "txflip.check")


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def coreModules() -> list[str]:
    return sorted(name for name in importGraph() if within(name, CORE))


def test_coreModulesFound() -> None:
    """
    The check sees the core (a moved folder would make it vacuous).
    """
    assert {"txflip.generation._machine", "txflip.listen._fds"} <= set(coreModules())


@pytest.mark.parametrize("module", coreModules())
def test_coreImportsNothingAbove(module: str) -> None:
    """
    No module of the core imports a layer above it, at any depth of its code.
    """
    assert sorted(n for n in importGraph()[module] if within(n, ABOVE)) == []


def test_functionLevelImportsSeen(tmp_path: Path) -> None:
    """
    An import inside a function or under C{TYPE_CHECKING}, and C{from txflip
    import run}, are seen as imports of the layer above.
    """
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n"
        "    from txflip.run._channel import SupervisorLink\n"
        "if TYPE_CHECKING:\n"
        "    import txflip.move._out\n"
        "from txflip import control\n"
    )
    modules = {moduleName(p) for p in PACKAGE.rglob("*.py")}
    found = {n for n in importedModules(source, modules) if within(n, ABOVE)}
    assert found == {"txflip.run._channel", "txflip.move._out", "txflip.control"}
