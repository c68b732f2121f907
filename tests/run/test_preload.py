"""
C{txflip run}'s preloading: one template per generation imports the application
and forks the generation's workers (real processes; a twistd plugin of the test's
own, whose module reads C{appcode.py} at import, in the template).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, twistdCommand
from tests.harness import pidAlive, waitFor
from tests.run.test_run import _ppid, echo, zombies
from tests.supervised import Supervised, flipecho, txflip
from txflip.generation._command import Command
from txflip.generation._spawn import Spawn
from txflip.run._forked import PreloadedWorker, exitReason
from txflip.run._preimport import namedIn
from txflip.run._runners import Runner, entryPoint, preloadable

PLUGIN = """\
from twisted.application.service import ServiceMaker

preloadtest = ServiceMaker("preloadtest", "preloadapp", "preloading test", "preloadtest")
"""
# The plugin's module: imported by twistd's option parsing (in the template), it
# reads appcode.py then; each worker says which version it runs.
APP = """\
import os

from appcode import VERSION
from txflip.echo import Options, makeService as _makeService


def makeService(options):
    with open(f"seen-{os.getpid()}", "w") as f:
        f.write(VERSION)
    return _makeService(options)
"""
INSTALLS_THE_REACTOR = """\
from twisted.internet import epollreactor

epollreactor.install()
VERSION = "3"
"""


class PreloadApp:
    """
    The test's application in C{tmp}, under C{txflip run}.
    """

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        (tmp / "twisted" / "plugins").mkdir(parents=True)
        (tmp / "twisted" / "plugins" / "preloadtest.py").write_text(PLUGIN)
        (tmp / "preloadapp.py").write_text(APP)
        self.code('VERSION = "1"\n')
        self.command = [
            *twistdCommand(),
            "-n",
            "preloadtest",
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ]
        # No bytecode: appcode.py changes within a second, at the same size.
        self.env = {"PYTHONPATH": f"{tmp}:{ROOT}", "PYTHONDONTWRITEBYTECODE": "1"}

    def code(self, text: str) -> None:
        (self.dir / "appcode.py").write_text(text)

    def seen(self, pid: int) -> str:
        return (self.dir / f"seen-{pid}").read_text()


@pytest.fixture(params=["--warm", "--no-warm"])
def preloaded(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[PreloadApp, Supervised]]:
    app = PreloadApp(tmp_path)
    run = Supervised(
        tmp_path,
        app.command,
        "--workers",
        "3",
        "--probation",
        "0",
        request.param,
        env=app.env,
    )
    try:
        yield app, run
    finally:
        run.close()


def template(run: Supervised, pids: list[int]) -> int:
    """
    The one parent of C{pids}: a child of the zygote that forked it, a child of
    the supervisor (or of the supervisor itself, once that zygote is gone).
    """
    (parent,) = {_ppid(pid) for pid in pids}
    zygote = _ppid(parent)
    assert parent != run.pid and run.pid in (zygote, _ppid(zygote))
    run.track(parent)
    return parent


def test_everyPreloadedWorkerRunsTheNewCode(
    preloaded: tuple[PreloadApp, Supervised],
) -> None:
    """
    A module changed on disk between two generations is seen by every worker of
    the new one; each generation's workers are the children of its own template,
    and the old template is gone with its workers.
    """
    app, run = preloaded
    first = run.waitReady()
    assert len(first) == 3 and {app.seen(pid) for pid in first} == {"1"}
    old = template(run, first)
    app.code('VERSION = "2"\n')
    result = run.upgrade()
    assert result.returncode == 0, result.stderr + run.tail()
    second = [int(pid) for pid in result.stdout.split()]
    assert len(second) == 3 and not set(second) & set(first)
    assert {app.seen(pid) for pid in second} == {"2"}
    assert template(run, second) != old
    waitFor(lambda: not any(map(pidAlive, [old, *first])), 30, what="generation 1")


def refusedUpgrade(
    preloaded: tuple[PreloadApp, Supervised], code: str, *said: str
) -> list[str]:
    """
    Deploy C{code}: the upgrade fails, its error says each of C{said}, and the
    old workers serve on.  The log's lines that say the last.
    """
    app, run = preloaded
    first = run.waitReady()
    app.code(code)
    result = run.upgrade()
    assert result.returncode != 0
    for each in said:
        assert each in result.stderr, result.stderr
    assert run.waitReady() == first and echo(run.port) == b"hello\n"
    return [line for line in run.logText().splitlines() if said[-1] in line]


def test_aBrokenModuleFailsTheUpgrade(preloaded: tuple[PreloadApp, Supervised]) -> None:
    """
    The new template cannot import the application: the upgrade fails with the
    reason, and the old workers serve on.
    """
    refusedUpgrade(
        preloaded,
        'raise ImportError("broken deploy")\n',
        "(the preloading template)",
        "ImportError: broken deploy",
    )


def test_aModuleThatInstallsTheReactorIsRefused(
    preloaded: tuple[PreloadApp, Supervised],
) -> None:
    logged = refusedUpgrade(
        preloaded,
        INSTALLS_THE_REACTOR,
        "the application installed the reactor on import; it cannot be forked;"
        " use txflip run --no-preload",
    )
    assert len(logged) == 1 and "upgrade failed" in logged[0], logged


def test_aPluginThatImportsTheReactorIsParsedInTheWorker(
    preloaded: tuple[PreloadApp, Supervised],
) -> None:
    """
    Twisted's plugin loader swallows the guard's refusal (and twistd then says
    "Unknown command"): the template notices, and leaves the parsing to the
    workers, still forked from it.
    """
    app, run = preloaded
    run.waitReady()
    plugin = app.dir / "twisted" / "plugins" / "preloadtest.py"
    plugin.write_text("from twisted.internet import reactor  # noqa: F401\n" + PLUGIN)
    app.code('VERSION = "2"\n')
    result = run.upgrade()
    assert result.returncode == 0, result.stderr + run.tail()
    second = [int(pid) for pid in result.stdout.split()]
    assert {app.seen(pid) for pid in second} == {"2"}
    template(run, second)
    assert echo(run.port) == b"hello\n"
    assert "Unknown command" not in run.logText()


def test_anApplicationThatOpensAFileOnImportIsRefused(
    preloaded: tuple[PreloadApp, Supervised],
) -> None:
    """
    A file the application opens on import would be closed, or replaced by a
    listener, in each worker: the template refuses it with one line.
    """
    logged = refusedUpgrade(
        preloaded,
        'LOG = open(__file__ + ".log", "a")\nVERSION = "2"\n',
        "use txflip run --no-preload",
        "the application opened fd",
    )
    assert len(logged) == 1 and "upgrade failed" in logged[0], logged


def test_manyWorkersWithABigEnvironmentStart(tmp_path: Path) -> None:
    """
    Each fork request carries the worker's environment: asked for all at once,
    sixteen of 32 kB filled the socket's buffer, and the start failed (EAGAIN).
    """
    app = PreloadApp(tmp_path)
    env = {**app.env, "BIG": "x" * 32768}
    run = Supervised(tmp_path, app.command, "--workers", "16", env=env)
    try:
        pids = waitFor(
            lambda: p if len(p := run.ready()) == 16 else None,
            60,
            what=f"16 ready workers: {run.tail()}",
        )
        template(run, pids)
        assert echo(run.port) == b"hello\n"
    finally:
        run.close()


def test_aKilledWorkerIsForkedAgainByItsTemplate(
    preloaded: tuple[PreloadApp, Supervised],
) -> None:
    _, run = preloaded
    first = run.waitReady()
    parent = template(run, first)
    os.kill(first[0], signal.SIGKILL)
    replaced = waitFor(
        lambda: [p for p in run.ready() if p not in first], 30, what="a replacement"
    )
    assert _ppid(replaced[0]) == parent and run.status()["generation"] == 1
    assert echo(run.port) == b"hello\n"


def test_stopLeavesNoProcess(preloaded: tuple[PreloadApp, Supervised]) -> None:
    _, run = preloaded
    pids = run.waitReady()
    parent = template(run, pids)
    zygote = _ppid(parent)  # or the supervisor, if it is gone already
    run.signal(signal.SIGTERM)
    assert run.proc.waitExit(30) == 0, run.tail()
    assert not any(map(pidAlive, [zygote, parent, *pids]))
    assert "Traceback" not in run.logText(), run.tail()


def test_templateImportsNoReactor() -> None:
    code = (
        "import sys, txflip.run._template;"
        " assert 'twisted.internet.reactor' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_theTemplateLoadsTheEndpointParsersForItsWorkers() -> None:
    """
    Every worker parses a C{flip:}/C{tcp:} description, which loads every
    endpoint-parser plugin (Autobahn's, when installed, costs tens of ms): the
    template loads them once, for its workers to share; Twisted's own brings its
    C{haproxy:} parser.  The reactor stays out.
    """
    twistd = twistdCommand()
    code = (
        "import sys; from txflip.run import _template as t;"
        " sys.meta_path.insert(0, t.Guard());"
        " t.prepare('twistd', sys.argv[1], sys.argv[1:]);"
        " missing = {'twisted.protocols.haproxy', 'txflip.run._channel'}"
        " - set(sys.modules);"
        " assert not missing, missing;"
        " assert 'twisted.internet.reactor' not in sys.modules"
    )
    argv = [*twistd[1:], "-n", "flipecho", "--listen", "tcp:0"]
    subprocess.run([twistd[0], "-c", code, *argv], check=True, cwd=ROOT)


# An application named by twistd web's --class: it says which process imported it.
NAMED_APP = """\
import os

from twisted.web.resource import Resource

with open(f"imported-{os.getpid()}", "w"):
    pass


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"
"""


def test_theTemplateImportsTheApplicationTwistdWebNames(tmp_path: Path) -> None:
    """
    twistd's C{web} plugin imports the reactor, so each worker parses its
    options, which would import the application its C{--class} names in each
    worker, unshared: the template imports it first (and twistd's plugins).
    """
    (tmp_path / "namedapp.py").write_text(NAMED_APP)
    twistd = twistdCommand()
    code = (
        "import os, sys; from txflip.run import _template as t;"
        " sys.meta_path.insert(0, t.Guard());"
        " _, inWorker = t.prepare('twistd', sys.argv[1], sys.argv[1:]);"
        " assert inWorker;"
        " missing = {'namedapp', 'twisted.plugins.twisted_web'} - set(sys.modules);"
        " assert not missing, missing;"
        " assert 'twisted.internet.reactor' not in sys.modules;"
        " assert os.listdir() == [f'imported-{os.getpid()}'], os.listdir()"
    )
    web = ["flip", "web", "--listen", "flip:tcp:0", "--class", "namedapp.Hello"]
    run = tmp_path / "run"
    run.mkdir()
    subprocess.run(
        [twistd[0], "-c", code, *twistd[1:], "-n", *web],
        check=True,
        cwd=run,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
    )


@pytest.mark.parametrize(
    "argv, names",
    [
        (["twistd", "-n", "web", "--class", "a.B", "--wsgi=c.d"], ["a.B", "c.d"]),
        (
            ["twistd", "-n", "flip", "web", "--listen", "tcp:0", "--wsgi", "e.f"],
            ["e.f"],
        ),
        (["twistd", "-n", "web", "--path", "."], []),
        (["twistd", "-n", "other", "--class", "a.B"], []),
        (["twistd", "-n", "web", "--class"], []),
    ],
)
def test_namesTwistdWebImports(argv: list[str], names: list[str]) -> None:
    assert namedIn(argv) == names


def test_workersShareTheApplicationTwistdWebNames(tmp_path: Path) -> None:
    """
    Under C{txflip run}, C{flip web --class} workers answer with the
    application their template imported: one import per generation, by the
    workers' parent.
    """
    (tmp_path / "namedapp.py").write_text(NAMED_APP)
    web = ["flip", "web", "--listen", "flip:tcp:0:interface=127.0.0.1"]
    web += ["--class", "namedapp.Hello", "--logfile", "access.log"]
    run = Supervised(
        tmp_path,
        [*twistdCommand(), "-n", *web],
        "--workers",
        "2",
        "--probation",
        "0",
        env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
    )
    try:
        for _ in range(2):
            workers = run.waitReady()
            parent = template(run, workers)
            imported = {p.name for p in tmp_path.glob("imported-*")}
            assert f"imported-{parent}" in imported
            assert not {f"imported-{pid}" for pid in workers} & imported
            result = run.upgrade()
            assert result.returncode == 0, result.stderr + run.tail()
        assert len(list(tmp_path.glob("imported-*"))) == 3
    finally:
        run.close()


@pytest.mark.parametrize(
    "argv, kind",
    [
        ([sys.executable, "-m", "app.main", "x"], "module"),
        ([sys.executable, "-u", "-m", "twisted.scripts.twistd", "-n"], "twistd"),
        ([sys.executable, *twistdCommand()[1:], "-n", "web"], "twistd"),
        ([sys.executable, __file__, "-v"], "script"),
    ],
)
def test_preloadableCommands(argv: list[str], kind: str) -> None:
    runner = preloadable(Command(argv[0], tuple(argv), "/"))
    assert isinstance(runner, Runner) and runner.kind == kind
    assert runner.interpreter == sys.executable


def test_preloadableScript() -> None:
    (twistd,) = twistdCommand()[1:]
    runner = preloadable(Command(twistd, (twistd, "-n", "flipecho"), "/"))
    assert isinstance(runner, Runner) and runner.kind == "twistd"
    assert runner.argv == (twistd, "-n", "flipecho") and runner.name == "twistd"


@pytest.mark.parametrize(
    "argv, why",
    [
        (["/bin/sh", "-c", "exec twistd"], "sh is not a Python program"),
        ([sys.executable, "-c", "pass"], "the interpreter option -c is not supported"),
        ([sys.executable], "no Python script or module to run"),
    ],
)
def test_notPreloadable(argv: list[str], why: str) -> None:
    assert preloadable(Command(argv[0], tuple(argv), "/")) == why


def test_exitReasons() -> None:
    from txflip.generation._exits import howItEnded

    assert howItEnded(exitReason(3 << 8)) == "exited with status 3"
    assert howItEnded(exitReason(signal.SIGKILL)) == "was killed by SIGKILL"
    assert howItEnded(exitReason(0)) == "exited with status 0"


def test_onlyTwistdsEntryPointIsParsedInTheTemplate(tmp_path: Path) -> None:
    """
    An installer's twistd script is twistd: its options are parsed in the
    template.  Any other script named twistd (one that extends C{sys.path}, or a
    broken release) is run as it is, in the worker.
    """
    (twistd,) = twistdCommand()[1:]
    assert entryPoint(twistd)
    own = tmp_path / "twistd"
    own.write_text(
        "#!/usr/bin/python3\nimport sys\nsys.path.insert(0, '/srv/app')\n"
        "from twisted.scripts.twistd import run\nsys.exit(run())\n"
    )
    assert not entryPoint(str(own))


def test_aShellCommandIsStartedAnew(tmp_path: Path) -> None:
    """
    A command that is not a Python program is exec'd for every worker, as
    without preloading, and the supervisor says why; C{--preload} refuses it.
    """
    command = ["sh", "-c", 'exec "$@"', "sh", *flipecho()]
    run = Supervised(tmp_path, command, "--workers", "2")
    try:
        pids = run.waitReady()
        assert {_ppid(pid) for pid in pids} == {run.pid}
        assert "txflip run: not preloading: sh is not a Python program" in (
            run.logText()
        )
    finally:
        run.close()
    refused = txflip("run", "--preload", "--", *command)
    assert refused.returncode == 1
    assert refused.stderr == "txflip run: --preload: sh is not a Python program\n"


def test_aDeadTemplateLeavesNoWorkerUnwatched(
    preloaded: tuple[PreloadApp, Supervised],
) -> None:
    """
    The template killed, its workers (now the supervisor's children) serve on;
    one of them killed is seen, reaped and replaced by a new template's worker.
    """
    _, run = preloaded
    first = run.waitReady()
    os.kill(template(run, first), signal.SIGKILL)
    waitFor(lambda: {_ppid(pid) for pid in first} == {run.pid}, 10, what="orphans")
    assert run.ready() == first and echo(run.port) == b"hello\n"
    os.kill(first[0], signal.SIGKILL)
    replaced = waitFor(
        lambda: [p for p in run.ready() if p not in first], 30, what="a replacement"
    )
    assert template(run, replaced) != run.pid
    assert not zombies(run.pid) and "was killed by SIGKILL" in run.logText()


def fakeWorker(reasons: list[str]) -> tuple[Any, PreloadedWorker]:
    """
    A preloaded worker on a fake reactor, as its template's reports drive it.
    """
    from twisted.internet.testing import MemoryReactorClock

    from txflip.generation._exits import howItEnded

    reactor = MemoryReactorClock()
    # Its extra fd: one it holds a copy of until its request is sent.
    spawn = Spawn(
        Command(sys.executable, (sys.executable,), "/"), {}, 2, [], 5.0, {"x": 0}
    )
    worker = PreloadedWorker(
        reactor, spawn, lambda reason: reasons.append(howItEnded(reason))
    )
    return reactor, worker


def failure(d: Any) -> str:
    failures: list[str] = []
    d.addErrback(lambda f: failures.append(f.getErrorMessage()))
    return failures[0]


def test_aWorkerNeverForkedTimesOut() -> None:
    reactor, worker = fakeWorker([])
    assert worker.fds and not worker.started.called
    reactor.advance(5)
    assert failure(worker.result) == (
        "the preloading template did not fork a worker within 5 s"
    )
    assert worker.gone and not worker.fds


def test_aWorkerThatExitsBeforeReadySaysWhy() -> None:
    _, worker = fakeWorker([])
    worker.forked(os.getpid())
    assert worker.started.result == os.getpid()
    worker._received(b"error cannot listen\n")
    worker.exited(3 << 8)
    assert failure(worker.result) == (
        f"child pid={os.getpid()} exited with status 3 before it was ready:"
        " cannot listen"
    )


def test_aWorkerKilledAfterReadyIsReported() -> None:
    reasons: list[str] = []
    _, worker = fakeWorker(reasons)
    worker.forked(os.getpid())
    worker._received(b"rea")
    worker._received(b"dy\n")
    assert worker.result.result == os.getpid()
    worker.exited(signal.SIGKILL)
    worker.exited(0)  # said twice (the template, then its pidfd): once
    assert reasons == ["was killed by SIGKILL"]
