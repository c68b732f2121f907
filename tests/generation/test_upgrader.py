"""
Unit tests for txflip.Upgrader: what is allowed when, with a fake
reactor and a fake SpawnAttempt whose outcome the test decides.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from txflip import Upgrader
from txflip._errors import (
    ChildFailed,
    NotReady,
    ParentAlive,
    PidFileError,
    Refused,
    SpawnFailed,
    Stopping,
    TxflipError,
    UpgradeInProgress,
    WorkerOfSupervisor,
)
from txflip.generation import _parent
from txflip.generation._command import Command
from txflip.generation._ending import STOPPED, Ending, Successor
from txflip.generation._handoff import MARKER, SUPERVISOR, ParentWatcher
from txflip.generation._process import ProcessState
from txflip.generation._spawn import Spawn
from txflip.listen._addresses import parseListen
from txflip.listen._fds import bindSocket
from txflip.run._channel import SupervisorLink

COMMAND = Command("/nonexistent/python", ("python", "-m", "app"), "/")


class FakeAttempt:
    """
    Stands in for L{txflip.generation._spawn.SpawnAttempt}: records how it was made; the
    test fires C{result}.
    """

    made: list[FakeAttempt] = []
    cancelSynchronously = True
    failToStart: Exception | None = None

    def __init__(self, reactor: Any, spawn: Spawn) -> None:
        if self.failToStart is not None:
            raise self.failToStart
        self.reactor = reactor
        self.command = spawn.command
        self.environ = dict(spawn.environ)
        self.generation = spawn.generation
        self.listeners = list(spawn.listeners)
        self.timeout = spawn.timeout
        self.extraFDs = dict(spawn.extraFDs)
        self.result: Deferred[int] = Deferred()
        self.pid = 50000 + len(self.made)
        self.started: Deferred[int] = succeed(self.pid)
        self.cancelled = 0
        self.made.append(self)

    def cancel(self) -> Deferred[int]:
        self.cancelled += 1
        if self.cancelSynchronously and not self.result.called:
            self.result.errback(Failure(Stopping()))
        return self.result

    def ready(self) -> None:
        self.result.callback(self.pid)

    def fail(self, error: Exception) -> None:
        self.result.errback(Failure(error))


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeAttempt]]:
    made: list[FakeAttempt] = []
    monkeypatch.setattr(FakeAttempt, "made", made)
    yield made


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


def makeUpgrader(reactor: MemoryReactorClock, **kwargs: Any) -> Upgrader:
    """
    An Upgrader with its own process state (one per process is allowed) that
    starts L{FakeAttempt}s.
    """
    kwargs.setdefault("command", COMMAND)
    return Upgrader(reactor, spawner=FakeAttempt, process=ProcessState(), **kwargs)


def firstGeneration(reactor: MemoryReactorClock, **kwargs: Any) -> Upgrader:
    return makeUpgrader(reactor, environ={}, **kwargs)


def outcome(d: Deferred[Any]) -> Any:
    """
    The result of a fired Deferred (a Failure is returned, and consumed).
    """
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    return results[0]


def failsWith(d: Deferred[Any], kind: type[Exception]) -> Exception:
    result = outcome(d)
    assert isinstance(result, Failure), result
    assert isinstance(result.value, kind), result.value
    message = str(result.value)
    assert message and len(message.splitlines()) == 1
    return result.value


# --- first generation -------------------------------------------------------------


def test_firstGeneration(reactor: MemoryReactorClock) -> None:
    upgrader = firstGeneration(reactor)
    assert upgrader.generation == 1
    assert not upgrader.hasParent
    assert upgrader.successor is None
    assert upgrader.pidFile is None
    assert outcome(upgrader.whenParentExited()) is None
    assert not upgrader.whenExit().called


def test_upgradeTimeoutMustBePositive(reactor: MemoryReactorClock) -> None:
    with pytest.raises(ValueError):
        firstGeneration(reactor, upgradeTimeout=0)


def test_upgradeBeforeReady(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt]
) -> None:
    upgrader = firstGeneration(reactor)
    error = failsWith(upgrader.upgrade(), NotReady)
    assert str(error) == "process is not ready yet"
    assert attempts == []


def test_upgradeAfterReadySpawns(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt]
) -> None:
    environ: dict[str, str] = {"KEEP": "me"}
    upgrader = makeUpgrader(reactor, environ=environ, upgradeTimeout=12.5)
    listener = upgrader.listen("tcp:0:interface=127.0.0.1")
    try:
        upgrader.ready()
        d = upgrader.upgrade()
        assert not d.called
        [attempt] = attempts
        assert attempt.reactor is reactor
        assert attempt.command == COMMAND
        assert attempt.generation == 2
        assert attempt.timeout == 12.5
        assert attempt.environ == {"KEEP": "me"}
        assert attempt.listeners == [listener]
    finally:
        upgrader.listeners.close(unlink=True)


def test_secondUpgradeWhileInProgress(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt]
) -> None:
    upgrader = firstGeneration(reactor)
    upgrader.ready()
    first = upgrader.upgrade()
    error = failsWith(upgrader.upgrade(), UpgradeInProgress)
    assert str(error) == "upgrade in progress"
    assert len(attempts) == 1
    assert not first.called


def test_childFailsThenUpgradeAllowedAgain(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt]
) -> None:
    upgrader = firstGeneration(reactor)
    upgrader.ready()
    exit = upgrader.whenExit()
    d = upgrader.upgrade()
    problem = ChildFailed("child pid=50000 exited with status 1 before it was ready")
    attempts[0].fail(problem)
    assert failsWith(d, ChildFailed) is problem
    assert not exit.called
    assert upgrader.successor is None
    # Ready again: another upgrade starts another attempt.
    again = upgrader.upgrade()
    assert len(attempts) == 2
    assert attempts[1].generation == 2
    attempts[1].ready()
    assert outcome(again) == attempts[1].pid


def test_childReady(reactor: MemoryReactorClock, attempts: list[FakeAttempt]) -> None:
    upgrader = firstGeneration(reactor)
    upgrader.ready()
    exitBefore = upgrader.whenExit()
    d = upgrader.upgrade()
    attempts[0].ready()
    assert outcome(d) == attempts[0].pid
    assert upgrader.successor == attempts[0].pid
    assert outcome(exitBefore) == Ending(Successor(attempts[0].pid))
    assert outcome(upgrader.whenExit()) == Ending(Successor(attempts[0].pid))
    assert str(failsWith(upgrader.upgrade(), Stopping)) == "terminating"
    assert len(attempts) == 1
    assert outcome(upgrader.stop()) is None


def openFDs() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_channelsGoToTheSuccessor(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt]
) -> None:
    """
    A channel opened with openChannel reaches each next generation under its name
    (our copy of its end closed once it is started), and our end comes with the
    Successor in whenExit's Ending.
    """
    upgrader = firstGeneration(reactor)
    upgrader.openChannel("moves")
    upgrader.ready()
    d = upgrader.upgrade()
    theirs = attempts[0].extraFDs["moves"]
    with pytest.raises(OSError):
        os.fstat(theirs)
    attempts[0].ready()
    assert outcome(d) == attempts[0].pid
    ending = outcome(upgrader.whenExit())
    assert not ending.final
    assert ending.successor.pid == attempts[0].pid
    ours = ending.successor.channels["moves"]
    assert (ours.family, ours.type) == (socket.AF_UNIX, socket.SOCK_STREAM)
    assert ours.fileno() >= 0
    ours.close()


@pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc (Linux)"
)
def test_channelsOfAFailedChildAreClosed(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt]
) -> None:
    """
    A child that fails leaves no channel end open here, nor does one we kill.
    """
    upgrader = firstGeneration(reactor)
    upgrader.openChannel("moves")
    upgrader.ready()
    before = openFDs()
    failed = upgrader.upgrade()
    assert openFDs() != before
    attempts[0].fail(ChildFailed("child pid=50000 exited with status 1"))
    failsWith(failed, ChildFailed)
    assert openFDs() == before
    upgrader.upgrade()
    outcome(upgrader.stop())
    assert openFDs() == before
    assert outcome(upgrader.whenExit()) == STOPPED


def test_noFdForAChannelFailsTheUpgradeOnly(
    reactor: MemoryReactorClock,
    attempts: list[FakeAttempt],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Out of fds for a channel (socketpair EMFILE): the upgrade fails with one line,
    nothing was started, and this generation serves on and can upgrade again.
    """
    upgrader = firstGeneration(reactor)
    upgrader.openChannel("moves")
    upgrader.ready()

    def noFds(*args: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    with monkeypatch.context() as patched:
        patched.setattr(socket, "socketpair", noFds)
        error = failsWith(upgrader.upgrade(), SpawnFailed)
    assert str(error) == (
        "cannot start the next generation: [Errno 24] Too many open files"
    )
    assert attempts == []
    upgrader.upgrade()
    assert len(attempts) == 1


def test_aChannelIsOpenedOnce(reactor: MemoryReactorClock) -> None:
    upgrader = firstGeneration(reactor)
    upgrader.openChannel("moves")
    with pytest.raises(ValueError, match="a channel named 'moves' is open already"):
        upgrader.openChannel("moves")


def test_spawnRaises(
    reactor: MemoryReactorClock,
    attempts: list[FakeAttempt],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upgrader = firstGeneration(reactor)
    upgrader.ready()
    monkeypatch.setattr(FakeAttempt, "failToStart", OSError("no such file"))
    error = failsWith(upgrader.upgrade(), ChildFailed)
    assert str(error) == "cannot start the next generation: no such file"
    monkeypatch.setattr(FakeAttempt, "failToStart", None)
    upgrader.upgrade()
    assert len(attempts) == 1


# --- stop ----------------------------------------------------------------------------


def test_stopWhenReady(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt]
) -> None:
    upgrader = firstGeneration(reactor)
    upgrader.ready()
    exit = upgrader.whenExit()
    assert outcome(upgrader.stop()) is None
    assert outcome(exit) == STOPPED
    failsWith(upgrader.upgrade(), Stopping)
    assert outcome(upgrader.stop()) is None
    assert attempts == []


def test_stopBeforeReady(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt]
) -> None:
    upgrader = firstGeneration(reactor)
    assert outcome(upgrader.stop()) is None
    assert outcome(upgrader.whenExit()) == STOPPED
    upgrader.ready()
    failsWith(upgrader.upgrade(), Stopping)


def test_stopDuringUpgrade(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt]
) -> None:
    upgrader = firstGeneration(reactor)
    upgrader.ready()
    exit = upgrader.whenExit()
    d = upgrader.upgrade()
    stopped = upgrader.stop()
    assert attempts[0].cancelled == 1
    assert outcome(stopped) is None
    failsWith(d, Stopping)
    assert outcome(exit) == STOPPED
    assert upgrader.successor is None
    failsWith(upgrader.upgrade(), Stopping)
    assert len(attempts) == 1


def test_stopDuringUpgradeWaitsForChild(
    reactor: MemoryReactorClock,
    attempts: list[FakeAttempt],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    As the real SpawnAttempt does, the outcome of cancel() comes once the child
    is reaped: stop() and the upgrade's Stopping wait for it.
    """
    monkeypatch.setattr(FakeAttempt, "cancelSynchronously", False)
    upgrader = firstGeneration(reactor)
    upgrader.ready()
    d = upgrader.upgrade()
    stopped = upgrader.stop()
    assert attempts[0].cancelled == 1
    assert not stopped.called and not d.called
    # A second stop while the first waits.
    assert outcome(upgrader.stop()) is None
    attempts[0].fail(Stopping())
    assert outcome(stopped) is None
    failsWith(d, Stopping)
    assert outcome(upgrader.whenExit()) == STOPPED


# --- a child generation ----------------------------------------------------------------


class Parent:
    """
    The pipes a parent generation would give its child.
    """

    def __init__(self) -> None:
        self.readyR, self.readyW = os.pipe()
        self.parentR, self.parentW = os.pipe()
        self.open = {self.readyR, self.readyW, self.parentR, self.parentW}

    def marker(
        self, listeners: list[dict[str, Any]] | None = None, **extra: Any
    ) -> str:
        return json.dumps(
            {
                "version": 1,
                "generation": 4,
                "ready": self.readyW,
                "parent": self.parentR,
                "listeners": listeners or [],
                **extra,
            }
        )

    def exit(self) -> None:
        self.close(self.parentW)

    def close(self, fd: int) -> None:
        if fd in self.open:
            self.open.discard(fd)
            os.close(fd)

    def readReady(self) -> bytes:
        os.set_blocking(self.readyR, False)
        try:
            return os.read(self.readyR, 100)
        except BlockingIOError:
            return b""


@pytest.fixture
def parent() -> Iterator[Parent]:
    p = Parent()
    yield p
    for fd in list(p.open):
        try:
            os.fstat(fd)
        except OSError:
            continue
        # Only the parent's own ends: the child's ends are the Upgrader's, closed
        # by it (or below, if the test never got that far).
        os.close(fd)


def watcher(reactor: MemoryReactorClock) -> ParentWatcher:
    [found] = [r for r in reactor.getReaders() if isinstance(r, ParentWatcher)]
    return found


def childGeneration(
    reactor: MemoryReactorClock, parent: Parent, **kwargs: Any
) -> tuple[Upgrader, dict[str, str]]:
    extra = {"parentPid": kwargs.pop("parentPid")} if "parentPid" in kwargs else {}
    environ = {
        "OTHER": "x",
        MARKER: parent.marker(kwargs.pop("listeners", None), **extra),
    }
    upgrader = makeUpgrader(reactor, environ=environ, **kwargs)
    # The Upgrader took the child's ends.
    parent.open -= {parent.readyW, parent.parentR}
    return upgrader, environ


def parentGone(reactor: MemoryReactorClock, upgrader: Upgrader) -> None:
    """
    The parent closes its end; we are never reparented here (our parent process
    does not exit), so the Upgrader gives up waiting for that after 5 s.
    """
    exited = upgrader.whenParentExited()
    watcher(reactor).doRead()
    for _ in range(2000):
        if exited.called:
            break
        reactor.advance(0.005)
    assert outcome(exited) is None


def test_childRefusesUpgradeUntilParentExits(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt], parent: Parent
) -> None:
    upgrader, environ = childGeneration(reactor, parent)
    assert upgrader.hasParent
    assert upgrader.generation == 4
    assert environ == {"OTHER": "x"}
    failsWith(upgrader.upgrade(), NotReady)
    upgrader.ready()
    assert parent.readReady() == b"ready\n"
    error = failsWith(upgrader.upgrade(), ParentAlive)
    assert str(error) == "previous generation hasn't exited yet"
    exited = upgrader.whenParentExited()
    assert not exited.called
    parent.exit()
    parentGone(reactor, upgrader)
    assert outcome(exited) is None
    assert outcome(upgrader.whenParentExited()) is None
    upgrader.upgrade()
    [attempt] = attempts
    assert attempt.generation == 5
    assert MARKER not in attempt.environ


def test_childParentExitsBeforeReady(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt], parent: Parent
) -> None:
    upgrader, _ = childGeneration(reactor, parent)
    parent.exit()
    parentGone(reactor, upgrader)
    failsWith(upgrader.upgrade(), NotReady)
    upgrader.ready()
    upgrader.upgrade()
    assert len(attempts) == 1


def assertExitSeenAtOnce(
    reactor: MemoryReactorClock,
    parent: Parent,
    upgrader: Upgrader,
    attempts: list[FakeAttempt],
    gone: Callable[[], None] = lambda: None,
) -> None:
    """
    Ready C{upgrader}; its parent exits (and then C{gone} makes its pid look
    gone): the pipe's end alone tells the child, and an upgrade is allowed.
    """
    upgrader.ready()
    exited = upgrader.whenParentExited()
    parent.exit()
    gone()
    watcher(reactor).doRead()
    assert outcome(exited) is None
    upgrader.upgrade()
    assert len(attempts) == 1


def test_childReparentedEndsWaitAtOnce(
    reactor: MemoryReactorClock,
    attempts: list[FakeAttempt],
    parent: Parent,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Once the parent pipe is closed and the parent's pid is gone (or a zombie), the
    previous generation has exited: no waiting for the 5 s limit.  (Not "we were
    reparented": a child started detached, under systemd, never was its child.)
    """
    upgrader, _ = childGeneration(reactor, parent)

    def gone() -> None:
        monkeypatch.setattr(_parent, "pidAlive", lambda pid: False)

    assertExitSeenAtOnce(reactor, parent, upgrader, attempts, gone)


def test_childParentAlreadyGoneAtStart(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt], parent: Parent
) -> None:
    """
    The table names the parent's pid; if our parent process is already someone
    else (the parent was killed while we started), the pipe's end means the
    parent has exited: no waiting.
    """
    with open("/proc/sys/kernel/pid_max") as f:
        gonePID = int(f.read())  # never allocated
    upgrader, _ = childGeneration(reactor, parent, parentPid=gonePID)
    assertExitSeenAtOnce(reactor, parent, upgrader, attempts)


def test_childParentPipeHangUpAsConnectionLost(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt], parent: Parent
) -> None:
    upgrader, _ = childGeneration(reactor, parent)
    upgrader.ready()
    parent.exit()
    exited = upgrader.whenParentExited()
    watcher(reactor).connectionLost(None)  # type: ignore[arg-type]
    assert reactor.getReaders() == []
    reactor.advance(5.1)
    for _ in range(10):
        reactor.advance(0.005)
    assert outcome(exited) is None


def test_childInheritsAndClosesUnclaimedOnceParentGone(
    reactor: MemoryReactorClock,
    attempts: list[FakeAttempt],
    parent: Parent,
    tmp_path: Path,
) -> None:
    kept = bindSocket(parseListen("tcp:0:interface=127.0.0.1"))
    path = str(tmp_path / "old.sock")
    dropped = bindSocket(parseListen(f"unix:{path}"))
    keptPort = kept.getsockname()[1]
    entries = [
        {
            "fd": kept.detach(),
            "kind": "tcp",
            "host": "127.0.0.1",
            "port": keptPort,
            "path": "",
            "requestedPort": 0,
        },
        {
            "fd": dropped.detach(),
            "kind": "unix",
            "host": "",
            "port": 0,
            "path": path,
            "requestedPort": 0,
        },
    ]
    upgrader, _ = childGeneration(reactor, parent, listeners=entries)
    try:
        listener = upgrader.listen("tcp:0:interface=127.0.0.1")
        assert listener.inherited and listener.spec.port == keptPort
        assert os.path.exists(path)
        upgrader.ready()
        # Kept while the parent lives: a listener may still be asked for late.
        assert os.path.exists(path)
        parent.exit()
        parentGone(reactor, upgrader)
        assert not os.path.exists(path)  # not configured any more: closed, unlinked
        upgrader.upgrade()
        assert attempts[0].listeners == [listener]
    finally:
        upgrader.listeners.close(unlink=True)


# --- pid file ----------------------------------------------------------------------------


@pytest.fixture
def pidPath(tmp_path: Path) -> Path:
    """Where the pid file goes (nothing there yet)."""
    return tmp_path / "app.pid"


@pytest.fixture
def withPidFile(reactor: MemoryReactorClock, pidPath: Path) -> Upgrader:
    """A first generation, not ready yet, with its pid file at L{pidPath}."""
    return firstGeneration(reactor, pidFile=str(pidPath))


def assertNames(path: Path, pid: int) -> None:
    """The pid file at C{path} names C{pid}, on one line as a pid file does."""
    assert path.read_text() == f"{pid}\n"


def test_pidFileWrittenAtReady(
    attempts: list[FakeAttempt], withPidFile: Upgrader, pidPath: Path
) -> None:
    upgrader = withPidFile
    assert upgrader.pidFile is not None and upgrader.pidFile.path == str(pidPath)
    assert not pidPath.exists()
    upgrader.ready()
    assertNames(pidPath, os.getpid())


def childWritesPidFile(
    upgrader: Upgrader, attempts: list[FakeAttempt], pidPath: Path
) -> Deferred[int]:
    """
    An upgrade whose new generation writes its pid in the pid file, as it does
    when it is ready; the upgrade's Deferred.
    """
    upgrader.ready()
    d = upgrader.upgrade()
    pidPath.write_text(f"{attempts[0].pid}\n")
    return d


def test_pidFileRewrittenOnFailedUpgrade(
    attempts: list[FakeAttempt], withPidFile: Upgrader, pidPath: Path
) -> None:
    d = childWritesPidFile(withPidFile, attempts, pidPath)
    attempts[0].fail(ChildFailed("child pid=50000 was killed by SIGKILL"))  # then died
    failsWith(d, ChildFailed)
    assertNames(pidPath, os.getpid())


def test_pidFileLeftToSuccessor(
    attempts: list[FakeAttempt], withPidFile: Upgrader, pidPath: Path
) -> None:
    d = childWritesPidFile(withPidFile, attempts, pidPath)
    attempts[0].ready()
    outcome(d)
    outcome(withPidFile.stop())
    assertNames(pidPath, attempts[0].pid)


def test_pidFileNamesLiveServer(reactor: MemoryReactorClock, pidPath: Path) -> None:
    pidPath.write_text(f"{os.getppid()}\n")
    with pytest.raises(PidFileError, match="another server is running"):
        firstGeneration(reactor, pidFile=str(pidPath))


def test_childAllowsParentInPidFile(
    reactor: MemoryReactorClock, parent: Parent, pidPath: Path
) -> None:
    pidPath.write_text(f"{os.getppid()}\n")
    upgrader, _ = childGeneration(reactor, parent, pidFile=str(pidPath))
    upgrader.ready()
    assertNames(pidPath, os.getpid())
    parent.exit()
    parentGone(reactor, upgrader)


@pytest.fixture
def vanishingDirectory(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """
    (directory, pid file path): the test moves the directory away and back.
    """
    directory = tmp_path / "run"
    directory.mkdir()
    yield directory, directory / "app.pid"


def test_failedReadyIsNotReady(
    reactor: MemoryReactorClock,
    attempts: list[FakeAttempt],
    vanishingDirectory: tuple[Path, Path],
) -> None:
    directory, path = vanishingDirectory
    upgrader = firstGeneration(reactor, pidFile=str(path))
    directory.rename(directory.with_name("elsewhere"))
    with pytest.raises(PidFileError):
        upgrader.ready()
    failsWith(upgrader.upgrade(), NotReady)


def test_readyCanBeRetriedAfterPidFileError(
    reactor: MemoryReactorClock,
    attempts: list[FakeAttempt],
    vanishingDirectory: tuple[Path, Path],
) -> None:
    directory, path = vanishingDirectory
    upgrader = firstGeneration(reactor, pidFile=str(path))
    moved = directory.with_name("elsewhere")
    directory.rename(moved)
    with pytest.raises(PidFileError):
        upgrader.ready()
    moved.rename(directory)
    upgrader.ready()
    assertNames(path, os.getpid())


def test_readyTwiceIsHarmless(
    attempts: list[FakeAttempt], withPidFile: Upgrader
) -> None:
    withPidFile.ready()
    withPidFile.ready()
    withPidFile.upgrade()
    assert len(attempts) == 1


def test_listenUsesFirstGenerationDirectory(
    reactor: MemoryReactorClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    upgrader = firstGeneration(reactor)
    monkeypatch.chdir("/")
    listener = upgrader.listen("unix:rel.sock")
    try:
        assert listener.spec.path == str(tmp_path / "rel.sock")
        assert os.path.exists(tmp_path / "rel.sock")
    finally:
        upgrader.listeners.close(unlink=True)


def test_listenSpecObject(reactor: MemoryReactorClock) -> None:
    upgrader = firstGeneration(reactor)
    listener = upgrader.listen(parseListen("udp:0:interface=127.0.0.1"))
    try:
        assert listener.sock.type == socket.SOCK_DGRAM
    finally:
        upgrader.listeners.close(unlink=True)


def test_callbacksMayCallTheUpgraderAgain(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt]
) -> None:
    """
    An upgrade's Deferred fires after the state machine's transition: a callback
    that retries the upgrade, or stops, works (automat forbids re-entering a
    transition that returns a value).
    """
    upgrader = firstGeneration(reactor)
    upgrader.ready()
    retried: list[Deferred[int]] = []
    upgrader.upgrade().addErrback(lambda _: retried.append(upgrader.upgrade()))
    attempts[0].fail(
        ChildFailed("child pid=1 exited with status 1 before it was ready")
    )
    assert len(retried) == 1 and len(attempts) == 2
    stopped: list[Deferred[None]] = []
    upgrader.whenExit().addCallback(lambda _: stopped.append(upgrader.stop()))
    attempts[1].ready()
    assert outcome(retried[0]) == attempts[1].pid
    assert len(stopped) == 1 and outcome(stopped[0]) is None


def test_lateListenAfterReadyStillInherits(
    reactor: MemoryReactorClock, parent: Parent
) -> None:
    """
    A listener asked for after ready (after an await, say) still gets the
    inherited socket while the parent lives, instead of binding a second one.
    """
    sock = bindSocket(parseListen("tcp:0:interface=127.0.0.1"))
    port = sock.getsockname()[1]
    entry = {
        "fd": sock.detach(),
        "kind": "tcp",
        "host": "127.0.0.1",
        "port": port,
        "path": "",
        "requestedPort": port,
    }
    upgrader, _ = childGeneration(reactor, parent, listeners=[entry])
    try:
        upgrader.ready()
        late = upgrader.listen(f"tcp:{port}:interface=127.0.0.1")
        assert late.inherited and late.spec.port == port
    finally:
        upgrader.listeners.close(unlink=True)


# --- the machine's shape ------------------------------------------------------------


def test_secondUpgraderInOneProcessRefused(reactor: MemoryReactorClock) -> None:
    """
    The first Upgrader reads (and removes) the handoff marker: a second one would
    believe it is a first generation, so it is refused.
    """
    process = ProcessState()
    Upgrader(reactor, environ={}, command=COMMAND, process=process)
    with pytest.raises(TxflipError, match="an Upgrader exists already"):
        Upgrader(reactor, environ={}, command=COMMAND, process=process)


def test_joinWaitsForTheUpgradeInProgress(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt]
) -> None:
    upgrader = firstGeneration(reactor)
    upgrader.ready()
    started: list[int] = []
    first = upgrader.upgrade(onStart=started.append)
    joined = upgrader.upgrade(join=True, onStart=started.append)
    assert started == [2] and len(attempts) == 1
    assert not joined.called
    attempts[0].ready()
    assert outcome(first) == outcome(joined) == attempts[0].pid


def test_joinWhenIdleStartsAnUpgrade(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt]
) -> None:
    upgrader = firstGeneration(reactor)
    upgrader.ready()
    started: list[int] = []
    d = upgrader.upgrade(join=True, onStart=started.append)
    assert started == [2] and len(attempts) == 1
    attempts[0].fail(ChildFailed("child pid=50000 exited with status 1"))
    failsWith(d, ChildFailed)


def test_refusalStartsNothing(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt]
) -> None:
    upgrader = firstGeneration(reactor)
    started: list[int] = []
    failsWith(upgrader.upgrade(onStart=started.append), Refused)
    assert started == [] and attempts == []


def test_isReadyFollowsTheMachine(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt]
) -> None:
    upgrader = firstGeneration(reactor)
    assert not upgrader.isReady
    upgrader.ready()
    assert upgrader.isReady
    upgrader.upgrade()
    assert upgrader.isReady and upgrader.successor is None
    attempts[0].ready()
    assert upgrader.isReady and upgrader.successor == attempts[0].pid


def test_stoppedBeforeReadyNeverServed(reactor: MemoryReactorClock) -> None:
    upgrader = firstGeneration(reactor)
    outcome(upgrader.stop())
    upgrader.ready()
    assert not upgrader.isReady


def test_whenParentExitedAfterStopFails(
    reactor: MemoryReactorClock, parent: Parent
) -> None:
    upgrader, _ = childGeneration(reactor, parent)
    waiting = upgrader.whenParentExited()
    outcome(upgrader.stop())
    failsWith(upgrader.whenParentExited(), Stopping)
    parent.exit()
    watcher(reactor).doRead()
    reactor.advance(5.1)
    for _ in range(10):
        reactor.advance(0.005)
    assert outcome(waiting) is None


def test_queriesFromCallbacks(
    reactor: MemoryReactorClock, attempts: list[FakeAttempt]
) -> None:
    """
    Deferreds fire after the transition: their callbacks may ask the upgrader
    what it is (automat refuses a reentrant input that returns a value).
    """
    upgrader = firstGeneration(reactor)
    upgrader.ready()
    seen: list[object] = []
    upgrader.whenExit().addCallback(
        lambda _: seen.extend([upgrader.isReady, upgrader.successor])
    )
    upgrader.upgrade()
    attempts[0].ready()
    assert seen == [True, attempts[0].pid]


# --- a supervisor's worker (txflip run) ----------------------------------------------


@pytest.fixture
def channel() -> Iterator[tuple[socket.socket, int]]:
    """
    A worker's channel to its supervisor: the supervisor's end, and the fd of
    the worker's, which the Upgrader owns from then on.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield ours, theirs.detach()
    ours.close()


def workerGeneration(
    reactor: MemoryReactorClock, parent: Parent, channel: tuple[socket.socket, int]
) -> Upgrader:
    """
    A worker, as a supervisor starts one: its parent is the supervisor (pid 777
    in the table), and its table names the channel to it.
    """
    environ = {MARKER: parent.marker(parentPid=777, fds={SUPERVISOR: channel[1]})}
    upgrader = makeUpgrader(reactor, environ=environ)
    parent.open -= {parent.readyW, parent.parentR}
    assert isinstance(upgrader.parent, SupervisorLink)
    assert upgrader.parent.supervisorPID == 777
    return upgrader


def test_workerRefusesEveryUpgradeNamingItsSupervisor(
    reactor: MemoryReactorClock,
    attempts: list[FakeAttempt],
    parent: Parent,
    channel: tuple[socket.socket, int],
) -> None:
    """
    A worker never upgrades itself, before or after it serves, join or not: the
    refusal names the supervisor to upgrade instead; nothing is started.
    """
    upgrader = workerGeneration(reactor, parent, channel)
    started: list[int] = []
    for join in (False, True):
        error = failsWith(upgrader.upgrade(join, started.append), WorkerOfSupervisor)
        assert str(error) == (
            "this is a worker of the supervisor pid 777: upgrade that"
            " (kill -HUP 777, or txflip upgrade)"
        )
    upgrader.ready()
    assert parent.readReady() == b"ready\n"
    assert upgrader.isReady
    for join in (False, True):
        failsWith(upgrader.upgrade(join, started.append), WorkerOfSupervisor)
    assert started == [] and attempts == []
    outcome(upgrader.stop())
    # Stopping, a worker is refused as any generation is.
    failsWith(upgrader.upgrade(), Stopping)


def test_workerStopsWhenItsSupervisorsPipeCloses(
    reactor: MemoryReactorClock, parent: Parent, channel: tuple[socket.socket, int]
) -> None:
    """
    The supervisor's pipe closing is its death, not a parent generation's exit:
    the worker stops gracefully at once (no 5 s wait for the pid), and does not
    say that upgrades are allowed.
    """
    upgrader = workerGeneration(reactor, parent, channel)
    upgrader.ready()
    exiting = upgrader.whenExit()
    parentExited = upgrader.whenParentExited()
    with capturedLogs() as events:
        parent.exit()
        watcher(reactor).doRead()
    assert outcome(exiting) == STOPPED
    assert [e["log_format"] for e in events] == [
        "txflip: the supervisor (pid {pid}) is gone: stopping"
    ]
    assert events[0]["pid"] == 777
    assert reactor.getDelayedCalls() == []
    assert not parentExited.called
    assert upgrader.isReady and upgrader.successor is None
    assert outcome(upgrader.stop()) is None


def test_workerStartingStopsWhenItsSupervisorsPipeCloses(
    reactor: MemoryReactorClock, parent: Parent, channel: tuple[socket.socket, int]
) -> None:
    """
    Before it is ready, the same: it stops, and never tells the supervisor it
    serves.
    """
    upgrader = workerGeneration(reactor, parent, channel)
    exiting = upgrader.whenExit()
    parent.exit()
    watcher(reactor).doRead()
    assert outcome(exiting) == STOPPED
    upgrader.ready()
    assert not upgrader.isReady
    assert parent.readReady() == b""


def test_workerStoppingIgnoresItsSupervisorsPipe(
    reactor: MemoryReactorClock, parent: Parent, channel: tuple[socket.socket, int]
) -> None:
    """
    Once stopping, the pipe's end is no news (the reactor closes it itself as
    it shuts down): nothing is logged, nothing is waited for.
    """
    upgrader = workerGeneration(reactor, parent, channel)
    upgrader.ready()
    parentExited = upgrader.whenParentExited()
    outcome(upgrader.stop())
    with capturedLogs() as events:
        parent.exit()
        watcher(reactor).doRead()
    assert events == []
    assert reactor.getDelayedCalls() == []
    assert not parentExited.called


def test_stoppedChildWithNobodyWaitingIgnoresItsParentsPipe(
    reactor: MemoryReactorClock, parent: Parent
) -> None:
    """
    A stopped generation waits for its parent's exit only if someone still waits
    for that (L{test_whenParentExitedAfterStopFails}); otherwise the pipe's end
    schedules nothing.
    """
    upgrader, _ = childGeneration(reactor, parent)
    outcome(upgrader.stop())
    parent.exit()
    watcher(reactor).doRead()
    assert reactor.getDelayedCalls() == []
