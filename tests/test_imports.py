"""
No import cycle between txflip's modules, counting the imports inside functions;
and what a server's start imports, in real processes.

A function-level import hides a cycle from Python (it runs after both modules are
loaded), and one under C{if TYPE_CHECKING:} never runs at all, but neither hides it
from a reader: the flow still goes back and forth (the drain's tracker called the
mover, the mover called the tracker back).  So every C{import} statement counts,
wherever it stands.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import txflip
from tests.harness import waitFor, waitForUpgrade

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


# --- what a start imports ------------------------------------------------------------

#: What a server in direct mode starts without (without --control, --admin or
#: systemd's sockets): each is imported when it is first used, and every module
#: imported costs every generation's start (the HUP -> ready of every upgrade).
#: Moving's receiving side comes once the generation serves, its moving side and
#: the metrics at its end.
LAZY = (
    "txflip.move._in",
    "txflip.move._out",
    "txflip.move._wire",
    "txflip.move._carry",
    "txflip.move._transport",
    "txflip.control._server",
    "txflip.control._metrics",
    "txflip.control._admin",
    "twisted.python.systemd",
    "txflip.run",
    "txflip.check",
)

#: Written where PYTHONPATH puts it first: as a process declares that it serves
#: (renames its pid file into place: an audited os.rename), it writes the names of
#: the modules it holds then in modules-PID.
_DUMP_AT_READY = """\
import os, sys

def _dump(event, args):
    if event == "os.rename" and str(args[1]).endswith("twistd.pid"):
        path = os.path.join({where!r}, f"modules-{{os.getpid()}}")
        with open(path + ".part", "w") as f:
            f.write("\\n".join(sorted(n for n, m in list(sys.modules.items()) if m)))
        os.rename(path + ".part", path)

sys.addaudithook(_dump)
"""


def lazyIn(loaded: Iterable[str]) -> list[str]:
    """
    The modules of L{LAZY} (or below them) among C{loaded}.
    """
    return sorted(
        n for n in loaded if any(n == k or n.startswith(k + ".") for k in LAZY)
    )


def test_importingLoadsNothingLazy() -> None:
    """
    Importing the package, its twistd support and flipecho, in a fresh
    interpreter, imports none of L{LAZY}: an import at the top of a module would.
    """
    code = "import sys, txflip, txflip.echo; print(' '.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)},
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = result.stdout.split()
    assert "txflip.service" in loaded
    assert lazyIn(loaded) == []


def modulesAtReady(pid: int, where: Path) -> list[str]:
    """
    The modules process C{pid} (started with L{_DUMP_AT_READY}) held as it
    declared that it serves.
    """
    dump = where / f"modules-{pid}"
    waitFor(dump.exists, 10, what=f"pid {pid}'s modules")
    return dump.read_text().split()


def test_aStartLoadsNothingLazy(flip: Any, tmp_path: Path) -> None:
    """
    A flipecho, the first generation and the one an upgrade started, holds none
    of L{LAZY} when it declares that it serves: what its start costs, and what
    an upgrade's HUP -> ready waits for.  (The second takes its moves channel,
    and imports L{txflip.move._in}, right after.)
    """
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_DUMP_AT_READY.format(where=str(tmp_path)))
    server = flip(env={"PYTHONPATH": f"{site}:{PACKAGE.parent}"})
    first = server.serving()
    loaded = modulesAtReady(first, tmp_path)
    assert "txflip.service" in loaded
    assert lazyIn(loaded) == []

    os.kill(first, signal.SIGHUP)
    second = waitForUpgrade(server.pidfile, first, timeout=30)[0]
    server.track(second)
    loaded = modulesAtReady(second, tmp_path)
    assert "txflip.service" in loaded
    assert lazyIn(loaded) == []
    waitFor(lambda: "moves channel closed" in server.logText(), 10, what="the channel")
