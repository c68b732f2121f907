"""
The supervisor's side of preloading on a fake reactor, with the forking process
played by the test on the other end of its socket: which fds are held while
fork requests wait, and that none is left behind when one cannot be made
(C{EMFILE}).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.error import ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from txflip.generation import _handoff
from txflip.generation._command import Command
from txflip.generation._spawn import Spawn
from txflip.run import _preload
from txflip.run._forked import PreloadedWorker
from txflip.run._forker import Forker
from txflip.run._runners import Runner, preloadable
from txflip.run._template import MAX_FDS, MAX_MESSAGE, SOCKET_FD


def openFDs() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


class Reactor(MemoryReactorClock):
    """
    A fake reactor that spawns nothing: a zygote's process is a fake.
    """

    def spawnProcess(self, protocol: Any, *args: Any, **kwargs: Any) -> Any:
        class Process:
            pid = 4242

            def signalProcess(self, name: str) -> None:
                pass

        return Process()


def spawnFor(stderr: int | None, extra: dict[str, int]) -> Spawn:
    command = Command(sys.executable, (sys.executable, "-m", "app"), "/")
    return Spawn(command, {}, 2, [], 5.0, extra, stderr=stderr)


def expectingFailure(worker: PreloadedWorker) -> PreloadedWorker:
    """
    C{worker}, whose failure to start (and so to run) the test expects: neither
    is left unhandled (logged as an error when collected).
    """
    for outcome in (worker.started, worker.result):
        outcome.addErrback(lambda f: None)
    return worker


class Played(Forker):
    """
    A forker whose process is the test, on the other end of its socket.
    """

    def __init__(self, reactor: Any, idle: Callable[[Any], None] = print) -> None:
        super().__init__(reactor, idle)
        self.process = socket.socket(fileno=os.dup(self.theirs.fileno()))
        self.process.settimeout(5)
        self.started()

    def say(self, message: dict[str, Any]) -> None:
        self.process.send(json.dumps(message).encode())
        self.doRead()

    def request(self, keep: bool = False) -> tuple[dict[str, Any], list[int]]:
        """
        The next request, and the fds that came with it (closed unless C{keep}).
        """
        message, fds, _, _ = socket.recv_fds(self.process, MAX_MESSAGE, MAX_FDS)
        for fd in [] if keep else fds:
            os.close(fd)
        return json.loads(message), fds

    def kill(self) -> None:
        pass

    def close(self) -> None:
        self.retire()
        self.stderr.close()
        self.process.close()


def test_aQueuedWorkerHoldsOnlyTheFdsItsCallerCloses() -> None:
    """
    Workers queued while their template imports hold copies of only the fds
    their caller closes once they are made (its extra fds, its stderr): the
    rest (0, 1, the listeners, the ready and parent pipes) are made as each
    request is sent, and closed once it is.  Sixty workers held thirteen fds
    each, and an upgrade hit EMFILE under a soft limit of 1024.
    """
    reactor = Reactor()
    forker = Played(reactor)
    extra = os.open("/dev/null", os.O_RDONLY)
    try:
        before = len(openFDs())
        workers = [
            PreloadedWorker(reactor, spawnFor(extra, {"x": extra}), lambda r: None)
            for _ in range(20)
        ]
        for worker in workers:
            forker.fork(expectingFailure(worker))
        assert len(openFDs()) - before == 2 * len(workers)
        forker.say({"ready": 1})
        request, fds = forker.request()
        assert request["fds"] == [0, 1, 2, 3, 4, 5] and len(fds) == 6
        for n in range(1, len(workers)):
            forker.say({"forked": n, "error": "no"})
            forker.request()
            # Answered: the worker holds nothing; the next one its 6 + 4 pipes'.
            assert len(openFDs()) - before == 2 * (len(workers) - n - 1) + 10
        forker.say({"forked": len(workers), "error": "no"})
        assert all(w.gone for w in workers) and len(openFDs()) == before
    finally:
        forker.close()
        os.close(extra)


def failingAt(monkeypatch: pytest.MonkeyPatch, n: int) -> Callable[[], bool]:
    """
    Make the C{n}th fd made (C{os.dup}, C{os.pipe}, C{socket.socketpair}) fail
    with C{EMFILE}; what is returned says whether it did.
    """
    made = [0]

    def failing(original: Callable[..., Any]) -> Callable[..., Any]:
        def make(*args: Any, **kwargs: Any) -> Any:
            made[0] += 1
            if made[0] == n:
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return original(*args, **kwargs)

        return make

    monkeypatch.setattr(os, "dup", failing(os.dup))
    monkeypatch.setattr(os, "pipe", failing(os.pipe))
    monkeypatch.setattr(socket, "socketpair", failing(socket.socketpair))
    return lambda: made[0] >= n


@pytest.mark.parametrize("n", range(1, 14))
def test_aWorkerThatCannotBeStartedLeavesNoFd(
    monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    """
    Whichever fd cannot be made (the template's socket, its stderr pipe, the
    zygote's, the copies the template and its worker keep): the worker is not
    started, with the error, and once every forker is gone no fd is left open.
    """
    runner = preloadable(Command(sys.executable, (sys.executable, "-m", "app"), "/"))
    assert isinstance(runner, Runner)
    extra = os.open("/dev/null", os.O_RDONLY)
    before = openFDs()
    failed = failingAt(monkeypatch, n)
    preloader = _preload.Preloader(runner, warm=True)
    errors: list[str] = []
    try:
        worker = preloader(Reactor(), spawnFor(extra, {"x": extra}), lambda r: None)
    except OSError as e:
        errors.append(str(e))
    else:
        worker.result.addErrback(lambda f: errors.append(f.getErrorMessage()))
    finally:
        monkeypatch.undo()
    try:
        assert failed() == bool(errors), errors
        assert all("Too many open files" in e for e in errors), errors
        for forker in list(preloader._alive):
            if not forker.gone:
                forker.ended(None)
        assert openFDs() == before
    finally:
        os.close(extra)


def test_aTemplateIsRetiredOnceAWorkerCancelledWhileForkedIsGone() -> None:
    """
    A worker cancelled while its request is out has ended already when its
    template reports its fork, then its exit: it will not say it ended again,
    and the template, idle once that exit is in, is retired all the same.
    """
    reactor = Reactor()
    idle: list[Forker] = []
    forker = Played(reactor, idle.append)
    worker = PreloadedWorker(reactor, spawnFor(None, {}), lambda r: None)
    child = subprocess.Popen(["sleep", "30"])
    try:
        forker.fork(expectingFailure(worker))
        forker.say({"ready": 1})
        forker.request()
        worker.cancel()
        reactor.advance(0)
        assert worker.gone and not idle  # its request is out
        forker.say({"forked": 1, "pid": child.pid})
        assert child.wait(10) == -signal.SIGKILL  # killed once forked
        reactor.advance(0)
        assert not idle  # its exit is still to come
        forker.say({"exited": child.pid, "status": signal.SIGKILL})
        reactor.advance(0)
        assert idle == [forker]
    finally:
        child.kill()
        child.wait()
        forker.close()


def eof(fd: int) -> bool:
    """
    Whether every writer of C{fd} (a pipe's read end, a socket) is gone.
    """
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1) == b""
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.mark.parametrize("killed", [False, True])
def test_aWorkerForkedByATemplateThatDiedBeforeItSaidSoStops(killed: bool) -> None:
    """
    A template killed between its fork and its answer leaves a worker we never
    hear of: its parent pipe, whose end closing stops it, is closed then.
    """
    reactor = Reactor()
    forker = Played(reactor)
    worker = PreloadedWorker(reactor, spawnFor(None, {}), lambda r: None)
    forker.fork(expectingFailure(worker))
    forker.say({"ready": 1})
    request, fds = forker.request(keep=True)
    parent = fds[request["fds"].index(_handoff.PARENT_FD)]
    for fd in fds:
        if fd != parent:
            os.close(fd)
    try:
        assert not eof(os.dup(parent))
        if killed:
            forker.ended(Failure(ProcessTerminated(None, signal.SIGKILL, 9)))
        else:
            forker.ended(None)
        assert worker.gone and eof(parent)
    finally:
        forker.close()


def test_aTemplateForkedByAZygoteThatDiedBeforeItSaidSoExits() -> None:
    """
    A zygote killed between its fork and its answer leaves a template we never
    hear of: our end of its socket is closed then, and it exits at the end of
    the file.
    """
    runner = preloadable(Command(sys.executable, (sys.executable, "-m", "app"), "/"))
    assert isinstance(runner, Runner)
    reactor = Reactor()
    zygote = Played(reactor)
    template = _preload.Template(
        reactor, spawnFor(None, {}), lambda t: None, zygote.fork
    )
    zygote.say({"ready": 1})
    request, fds = zygote.request(keep=True)
    theirs = fds[request["fds"].index(SOCKET_FD)]
    for fd in fds:
        if fd != theirs:
            os.close(fd)
    try:
        assert not eof(os.dup(theirs))
        zygote.ended(Failure(ProcessTerminated(None, signal.SIGKILL, 9)))
        assert template.gone and eof(theirs)
    finally:
        zygote.close()


def test_aForkerRetiredWithItsReportsUnreadExitsQuietly() -> None:
    """
    The supervisor closes its end of a zygote's (or a template's) socket with
    reports still unread in it, as it stops: the loop reads a reset, not an
    end of file, and ends as it does at an end of file (it had died with a
    traceback in the supervisor's log).
    """
    from txflip.run._template import _send, serve

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        _send(ours, {"exited": 1, "status": 0})  # a report the supervisor never reads
        theirs.close()
        serve(ours, lambda request: None)  # returns: retired
    finally:
        ours.close()
