"""
C{txflip run --warm}: one zygote, kept between upgrades, forks every
generation's template while nothing it imported has changed on disk; a change
to any of it, and a fresh zygote replaces it (real processes, the preloading
tests' application; L{txflip.run._zygote} in a subprocess).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import pidAlive, sessionProcesses, waitFor
from tests.run.test_preload import PLUGIN, PreloadApp, template
from tests.run.test_run import _ppid, children, echo, zombies
from tests.supervised import Supervised, txflip

#: An endpoint-parser plugin: the zygote loads it, and the module it imports.
PARSER = """\
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

import depcode


@implementer(IPlugin, IStreamServerEndpointStringParser)
class Parser:
    prefix = "preloaddep"

    def parseStreamServer(self, reactor, *args, **kwargs):
        raise NotImplementedError(depcode.VALUE)


parser = Parser()
"""
#: The application also says which version of the zygote's module it sees.
APP = """\
import os

import depcode
from appcode import VERSION
from txflip.echo import Options, makeService as _makeService


def makeService(options):
    with open(f"seen-{os.getpid()}", "w") as f:
        f.write(f"{VERSION} {depcode.VALUE}")
    return _makeService(options)
"""


@pytest.fixture
def warm(tmp_path: Path) -> Iterator[tuple[PreloadApp, Supervised]]:
    app = PreloadApp(tmp_path)
    (tmp_path / "twisted" / "plugins" / "preloaddep.py").write_text(PARSER)
    (tmp_path / "preloadapp.py").write_text(APP)
    (tmp_path / "depcode.py").write_text('VALUE = "a"\n')
    run = Supervised(
        tmp_path, app.command, "--workers", "2", "--probation", "0", env=app.env
    )
    try:
        yield app, run
    finally:
        run.close()


def zygoteOf(run: Supervised, pids: list[int]) -> int:
    """
    The zygote that forked the template of C{pids}, a child of the supervisor.
    """
    zygote = _ppid(template(run, pids))
    assert zygote != run.pid and _ppid(zygote) == run.pid
    run.track(zygote)
    return zygote


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def upgraded(run: Supervised) -> list[int]:
    result = run.upgrade()
    assert result.returncode == 0, result.stderr + run.tail()
    return [int(pid) for pid in result.stdout.split()]


def test_oneZygoteForksEveryUpgradesTemplate(
    warm: tuple[PreloadApp, Supervised],
) -> None:
    """
    By default the zygote stays: the next upgrade's template is its child too,
    and imports the application anew (its module changed on disk is seen).
    """
    app, run = warm
    first = run.waitReady()
    zygote = zygoteOf(run, first)
    assert {app.seen(pid) for pid in first} == {"1 a"}
    app.code('VERSION = "2"\n')
    second = upgraded(run)
    assert {app.seen(pid) for pid in second} == {"2 a"}
    assert zygoteOf(run, second) == zygote, run.logText()
    assert "preloading zygote" not in run.logText()


def test_aChangedDependencyReplacesTheZygote(
    warm: tuple[PreloadApp, Supervised],
) -> None:
    """
    A module the zygote imported changes on disk: a fresh zygote imports it
    anew and forks the template, and the stale one is retired; the log says why.
    """
    app, run = warm
    first = run.waitReady()
    zygote = zygoteOf(run, first)
    (app.dir / "depcode.py").write_text('VALUE = "b"\n')
    second = upgraded(run)
    assert {app.seen(pid) for pid in second} == {"1 b"}
    assert zygoteOf(run, second) != zygote
    waitFor(lambda: not pidAlive(zygote), 10, what="the stale zygote's exit")
    (line,) = [x for x in run.logText().splitlines() if "preloading zygote" in x]
    assert f"replaces pid {zygote}: {app.dir / 'depcode.py'} changed" in line, line
    # The template the stale zygote forked before its check (killed unheard) is
    # gone too, reaped: only the new generation's processes are left.
    expected = {run.pid, zygoteOf(run, second), template(run, second), *second}

    def onlyThose() -> bool:
        found = sessionProcesses(run.pid)
        return {p for p, _ in found} == expected and "Z" not in dict(found).values()

    waitFor(onlyThose, 10, what=f"only {sorted(expected)} left, none a zombie")


def test_aKilledZygoteIsReplacedAtTheNextUpgrade(
    warm: tuple[PreloadApp, Supervised],
) -> None:
    """
    Its template and workers serve on (now the supervisor's descendants); the
    next upgrade starts a new zygote, and leaves no zombie.
    """
    _, run = warm
    first = run.waitReady()
    zygote = zygoteOf(run, first)
    os.kill(zygote, signal.SIGKILL)
    waitFor(lambda: not pidAlive(zygote), 10, what="the zygote's end")
    assert echo(run.port) == b"hello\n"
    second = upgraded(run)
    assert zygoteOf(run, second) != zygote and echo(run.port) == b"hello\n"
    waitFor(lambda: not any(map(pidAlive, first)), 30, what="generation 1")
    assert not zombies(run.pid)


def test_warmNeedsPreloading(tmp_path: Path) -> None:
    refused = txflip("run", "--warm", "--no-preload", "--", sys.executable, "x.py")
    assert refused.returncode == 1
    assert refused.stderr == (
        "txflip run: --warm needs preloading; drop --no-preload\n"
    )


FRESHNESS = """\
import importlib.util, os, sys
from txflip.run._zygote import changed, fingerprint

sys.path.insert(0, sys.argv[1])
import dep  # noqa: E402

spec = importlib.util.find_spec("lazydep")
loader = importlib.util.LazyLoader(spec.loader)
spec.loader = loader
lazy = importlib.util.module_from_spec(spec)
sys.modules["lazydep"] = lazy
loader.exec_module(lazy)

stamps = fingerprint()
assert changed(stamps) is None, changed(stamps)
assert type(lazy) is not type(sys), "the fingerprint loaded a lazy module"
with open(dep.__file__, "a") as f:
    f.write("# changed\\n")
print(changed(stamps))
"""


def test_theFingerprintSeesAChangedFileAndLoadsNothing(tmp_path: Path) -> None:
    """
    A module's file appended to is seen; taking the fingerprint imports nothing
    (a lazy module stays unloaded), so that it never changes by itself.
    """
    (tmp_path / "dep.py").write_text("X = 1\n")
    (tmp_path / "lazydep.py").write_text("LOADED = True\n")
    result = subprocess.run(
        [sys.executable, "-c", FRESHNESS, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path / 'dep.py'}\n"


#: A zygote (C{serve} in a child of ours) whose check outlasts its template,
#: which dies on import: what it then says, until our end of its socket closes.
DIES_BEFORE_VERDICT = """\
import json, os, socket, time
from txflip.run import _template as t

ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
zygote = os.fork()
if zygote == 0:
    ours.close()
    try:
        t.serve(theirs, lambda request: None, lambda request: time.sleep(0.5))
    except t._Become:
        os._exit(7)  # the template, dead before its verdict
    os._exit(0)
theirs.close()
r, w = os.pipe()
socket.send_fds(ours, [json.dumps({"id": 1, "env": {}, "fds": [5]}).encode()], [r])
said = [json.loads(ours.recv(1 << 16)) for _ in range(2)]
ours.close()
print(json.dumps(said), os.waitstatus_to_exitcode(os.waitpid(zygote, 0)[1]))
"""


def test_aTemplateDeadBeforeItsVerdictLeavesTheZygoteServing() -> None:
    """
    A template forked before its zygote's check, and dead before the check
    ends (its import crashed), is reported like any child; the zygote, whose
    verdict then finds no reader, serves on, and exits cleanly when retired.
    """
    result = subprocess.run(
        [sys.executable, "-c", DIES_BEFORE_VERDICT],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    replies, status = result.stdout.rsplit(" ", 1)
    forked, exited = json.loads(replies)
    assert forked == {"forked": 1, "pid": forked["pid"]}
    assert exited == {"exited": forked["pid"], "status": 7 << 8}
    assert status.strip() == "0", result.stderr


PARSE = """\
import os, sys
from txflip.run import _template as t

sys.meta_path.insert(0, t.Guard())
parse = os.environ["PARSE"] == "1"
work, inWorker = t.prepare("twistd", sys.argv[1], sys.argv[1:], parse=parse)
print(inWorker, "preloadapp" in sys.modules)
"""


@pytest.mark.parametrize("parse, said", [(True, "False True"), (False, "True False")])
def test_aTemplateToldNotToParseLeavesItToTheWorker(
    tmp_path: Path, parse: bool, said: str
) -> None:
    """
    Told that the last template's plugin imported the reactor, a template does
    not try parsing twistd's options again (nor import the plugin's module), and
    says that its workers parse them.
    """
    app = PreloadApp(tmp_path)
    argv = app.command
    result = subprocess.run(
        [argv[0], "-c", PARSE, *argv[1:]],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **app.env, "PARSE": str(int(parse))},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == said, result.stdout


def test_aPluginThatImportsTheReactorIsNotTriedAgain(
    warm: tuple[PreloadApp, Supervised],
) -> None:
    """
    Once a template found that the plugin imports the reactor, the next ones
    leave the parsing to their workers at once (the plugin's module, which
    notes each process that imports it, is not imported by the template).
    """
    app, run = warm
    run.waitReady()
    plugin = app.dir / "twisted" / "plugins" / "preloadtest.py"
    noted = 'import os\nopen(f"imported-{os.getpid()}", "w").close()\n'
    reactor = "from twisted.internet import reactor  # noqa: F401\n"
    plugin.write_text(noted + reactor + PLUGIN)
    tried = template(run, upgraded(run))
    assert (app.dir / f"imported-{tried}").exists()
    second = upgraded(run)
    assert not (app.dir / f"imported-{template(run, second)}").exists()
    assert all((app.dir / f"imported-{pid}").exists() for pid in second)


def test_aStuckZygoteIsKilledAsTheSupervisorStops(
    warm: tuple[PreloadApp, Supervised],
) -> None:
    """
    A stopped (SIGSTOP) zygote never reads its end of file: the supervisor
    kills it after CLOSE_TIMEOUT seconds, and exits without leaving it behind.
    """
    _, run = warm
    zygote = zygoteOf(run, run.waitReady())
    os.kill(zygote, signal.SIGSTOP)
    run.signal(signal.SIGTERM)
    assert run.proc.waitExit(30) == 0, run.tail()
    assert not pidAlive(zygote)


PATH_FILE = """\
import os, sys
from txflip.run._zygote import changed, fingerprint

site = sys.argv[1]
sys.path.append(site)
pth = os.path.join(site, "__editable__.app-1.0.pth")
stamps = fingerprint()
with open(pth, "w") as f:
    f.write("/srv/v2\\n")  # the same name, another release
print(changed(stamps))
"""


def test_aPathFileRewrittenIsAChange(tmp_path: Path) -> None:
    """
    C{pip install -e} of another release rewrites the same C{.pth} file (its
    name is no identifier): seen, by its contents' stamp.
    """
    (tmp_path / "__editable__.app-1.0.pth").write_text("/srv/v1\n")
    result = subprocess.run(
        [sys.executable, "-c", PATH_FILE, str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path / '__editable__.app-1.0.pth'}\n"


def test_aFileChangedAsTheZygoteImportedIsNotSettled(tmp_path: Path) -> None:
    """
    A file stamped as modified after the zygote started may have been imported
    half written, or before its change: such a zygote is used once.
    """
    from txflip.run._zygote import fingerprint, settled

    before = time.time_ns()
    old = fingerprint()
    assert settled(old, before)
    sys.path.append(str(tmp_path))
    try:
        (tmp_path / "zygotedep.py").write_text("X = 1\n")
        __import__("zygotedep")
        assert not settled(fingerprint(), before)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("zygotedep", None)


#: Imported by the zygote (through the parser plugin): hangs if asked to.
HANGS = """\
import os, time

VALUE = "c"
if os.path.exists(os.path.join(os.path.dirname(__file__), "hang")):
    time.sleep(3600)
"""


def test_aZygoteStuckImportingIsGivenUp(tmp_path: Path) -> None:
    """
    A fresh zygote hangs importing (its dependency blocks): the upgrade times
    out, and the zygote is killed with the template it never forked, so that
    the next upgrade starts another instead of queueing behind it.
    """
    app = PreloadApp(tmp_path)
    (tmp_path / "twisted" / "plugins" / "preloaddep.py").write_text(PARSER)
    (tmp_path / "preloadapp.py").write_text(APP)
    (tmp_path / "depcode.py").write_text('VALUE = "a"\n')
    run = Supervised(
        tmp_path,
        app.command,
        *("--probation", "0", "--upgrade-timeout", "3"),
        env=app.env,
    )
    try:
        first = run.waitReady()
        (tmp_path / "hang").touch()
        (tmp_path / "depcode.py").write_text(HANGS)
        assert run.upgrade().returncode != 0
        assert run.waitReady() == first
        (tmp_path / "hang").unlink()
        second = upgraded(run)
        assert {app.seen(pid) for pid in second} == {"1 c"}
        # Killed as its template was given up on: gone by now, or about to be.
        zygote = zygoteOf(run, second)
        waitFor(
            lambda: (
                [p for p in children(run.pid) if "zygote" in cmdline(p)] == [zygote]
            ),
            5,
            what=f"zygote {zygote} alone: {run.tail()}",
        )
    finally:
        run.close()
