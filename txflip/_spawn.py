"""
Starting the next generation and waiting for it to say it serves.

The child runs the same interpreter with the full original command line
(C{sys.orig_argv}) in the directory the first generation started in, with our
environment plus the handoff marker, sharing our stdin/stdout/stderr.  Its fds are
placed with C{spawnProcess(childFDs=...)}: 3 is a pipe we read (it writes C{ready}),
4 a pipe only we hold the write end of (it reads EOF when we exit), 5 onwards the
listening sockets.  Twisted closes every other fd in the child, so nothing else of
ours leaks into it.

Under systemd (C{$NOTIFY_SOCKET} set) the child is started I{detached}: a tiny
trampoline forks it and exits at once, so that it is PID 1's child (or the nearest
subreaper's) before it starts, let alone names itself with C{MAINPID=}.  systemd
then supervises it as its own child: it waits for it at C{systemctl stop} instead
of killing it together with the stop signal, as it does an "alien" main process
(one that is not its child).  The price is C{waitpid()}: we are not its parent.
A pidfd gives back what matters: we learn when it exits (not its exit status,
which its reaper gets; the reason a failed child gives on the ready pipe still
reaches us), and we can kill it without racing a reused pid.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.runtime import platform

from . import _handoff
from ._errors import ChildFailed, Stopping, UpgradeTimeout
from ._fds import Listener
from ._reactor import Reactor

#: Run as C{python -I -S -c TRAMPOLINE executable argv...}: fork; the parent says
#: the child's pid on the ready pipe and exits; the child waits until it has been
#: reparented, then becomes the next generation.
TRAMPOLINE = """\
import os, sys, time
me = os.getpid()
child = os.fork()
if child:
    os.write(3, b"pid %d\\n" % child)
    os._exit(0)
while os.getppid() == me:
    time.sleep(0.001)
try:
    os.execv(sys.argv[1], sys.argv[2:])
except OSError as e:
    os.write(3, ("error cannot run %s: %s\\n" % (sys.argv[1], e.strerror)).encode())
    os._exit(127)
"""
_PID_PREFIX = b"pid "


def shouldDetach(environ: Mapping[str, str]) -> bool:
    """
    Whether to start the next generation as PID 1's child rather than ours: under
    systemd (which supervises the main pid it is told of), where pidfds exist.
    """
    return (
        bool(environ.get("NOTIFY_SOCKET"))
        and platform.isLinux()
        and hasattr(os, "pidfd_open")
        and hasattr(signal, "pidfd_send_signal")
    )


@dataclass(frozen=True)
class Command:
    """
    How to start a generation: executable, argv, working directory.
    """

    executable: str
    args: tuple[str, ...]
    cwd: str
    #: Variables added to the child's environment.
    extraEnv: tuple[tuple[str, str], ...] = ()

    @classmethod
    def current(cls, cwd: str | None = None) -> Command:
        """
        This process's own command line, as it was started: a script the kernel
        ran through its C{#!} line (C{twistd -n flipecho}) is executed again, so
        that every generation has the same name in C{ps} and C{pgrep -x twistd};
        otherwise the interpreter with its full original command line
        (C{python3 -m app}, C{python3 /path/twistd ...}).
        """
        args = tuple(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
        script = _scriptIndex(args)
        if script is not None:
            return cls(args[script], args[script:], cwd or os.getcwd())
        return cls(sys.executable, args, cwd or os.getcwd())


def _scriptIndex(args: tuple[str, ...]) -> int | None:
    """
    Where the script stands in the interpreter's command line C{args} when the
    kernel started it through its C{#!} line: the process is then named after the
    script (C{/proc/self/comm}), not the interpreter.  After the interpreter comes
    the script, or one argument of the C{#!} line and then the script.
    """
    try:
        with open("/proc/self/comm") as f:
            name = f.read().strip()
    except OSError:
        return None
    if not name or os.path.basename(args[0])[:15] == name:
        return None
    for index in (1, 2):
        if index < len(args) and os.path.basename(args[index])[:15] == name:
            path = args[index]
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return index
    return None


def _cleanExit(reason: Failure) -> bool:
    """
    Whether the process exited with status 0.
    """
    value = reason.value
    return not getattr(value, "signal", None) and getattr(value, "exitCode", 1) == 0


def howItEnded(reason: Failure) -> str:
    """
    C{exited with status 3} / C{was killed by SIGKILL}.
    """
    value = reason.value
    signum = getattr(value, "signal", None)
    status = getattr(value, "exitCode", None)
    if signum:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"was killed by {name}"
    return f"exited with status {status}"


def describeExit(pid: int, reason: Failure | None) -> str:
    """
    C{child pid=N exited with status 3} / C{... was killed by SIGKILL}; only
    C{... exited} when the status is not ours to know (C{reason} None).
    """
    how = howItEnded(reason) if reason is not None else "exited"
    return f"child pid={pid} {how} before it was ready"


#: The signals txflip or twistd handle: a new generation is started with them
#: blocked, so that one reaching it before its handler is installed (a
#: process-group signal: a terminal's hangup or Ctrl-C, ``systemctl kill``, a log
#: rotator's SIGUSR1) waits for the handler instead of killing it.
HELD = frozenset(
    getattr(signal, name)
    for name in ("SIGHUP", "SIGQUIT", "SIGTERM", "SIGINT", "SIGUSR1")
    if hasattr(signal, name)
)


@contextmanager
def signalsHeld() -> Iterator[None]:
    """
    Block L{HELD} while the child is started.  The child inherits the blocked mask;
    L{releaseSignals} delivers what came meanwhile once the handlers are in place.
    Here, such a signal is only delayed.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def releaseSignals(*signums: int) -> None:
    """
    Unblock C{signums} (by default all of L{HELD}), blocked since we were spawned:
    call once their handlers are installed.
    """
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(signums) or HELD)


class Attempt(Protocol):
    """
    One attempt at starting the next generation, as the L{Upgrader} sees it.
    """

    #: The child's pid.
    pid: int
    #: Fires with the child's pid once it runs (at once unless it is started
    #: detached: then once the trampoline named it).
    started: Deferred[int]
    #: Fires with the child's pid once it is ready, or fails with an
    #: L{UpgradeError} once it is gone.
    result: Deferred[int]

    def cancel(self) -> Deferred[int]:
        """
        Kill the child unless it is ready; L{result} fires once it is gone.
        """


class Spawner(Protocol):
    """
    How an L{Upgrader} starts the next generation (L{SpawnAttempt}, or a fake in
    tests): the seam tableflip calls C{env}.
    """

    def __call__(
        self,
        reactor: Reactor,
        command: Command,
        environ: Mapping[str, str],
        generation: int,
        listeners: Sequence[Listener],
        timeout: float,
        extraFDs: Mapping[str, int],
    ) -> Attempt: ...


class _ChildProtocol(ProcessProtocol):
    """
    Turns the child's process events into one outcome: ready, or failed.
    """

    def __init__(self, attempt: SpawnAttempt) -> None:
        self._attempt = attempt
        self._buffer = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == _handoff.READY_FD:
            self._buffer += data
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                if line.startswith(_PID_PREFIX) and self._attempt.detached:
                    self._attempt._childStarted(line[len(_PID_PREFIX) :])
                elif line + b"\n" == _handoff.READY_MESSAGE:
                    self._attempt._childReady()
                elif line.startswith(_handoff.ERROR_PREFIX):
                    error = line[len(_handoff.ERROR_PREFIX) :]
                    self._attempt.childError = error.decode("utf-8", "replace")
            if len(self._buffer) > _handoff.MAX_ERROR + 64:
                self._attempt._fail(
                    ChildFailed(
                        f"child pid={self._attempt.pid} sent garbage on the ready pipe"
                    )
                )

    def processExited(self, reason: Failure) -> None:
        if self._attempt.detached:
            self._attempt._trampolineExited(reason)

    def processEnded(self, reason: Failure) -> None:
        if not self._attempt.detached:
            self._attempt._childEnded(reason)


class SpawnAttempt:
    """
    One attempt at starting the next generation.

    L{result} fires with the child's pid once it is ready, or fails with
    L{ChildFailed}, L{UpgradeTimeout} or L{Stopping}.  A failure is only reported once
    the child is gone (reaped), so that a failed attempt never leaves a second
    process behind when the next one starts.

    A child that ends after it was ready has taken over: nothing is undone, but if
    we are still here (draining) we say so, since nobody serves once we exit.

    Detached (see the module's docstring), L{pid} is the trampoline's until it
    names the child, and L{started} fires with the child's pid once it does.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Reactor,
        command: Command,
        environ: Mapping[str, str],
        generation: int,
        listeners: Sequence[Listener],
        timeout: float,
        extraFDs: Mapping[str, int],
        afterReady: Callable[[Failure], None] | None = None,
        detach: bool | None = None,
    ) -> None:
        """
        @param afterReady: called with the reason when the child ends after it
            was ready, instead of the direct mode's log line (a supervisor acts).
        """
        self.result: Deferred[int] = Deferred()
        self._afterReady = afterReady
        self.started: Deferred[int] = Deferred()
        # A supervisor's workers stay its children (it waits for them).
        self.detached = afterReady is None and (
            shouldDetach(environ) if detach is None else detach
        )
        self._pidfd: int | None = None
        self._reactor = reactor
        self._failure: Exception | None = None
        self._ready = False
        #: The reason the child gave for failing to start, if it gave one.
        self.childError: str | None = None
        env = dict(environ)
        env.update(command.extraEnv)
        env[_handoff.MARKER], childFDs = _handoff.plan(generation, listeners, extraFDs)
        executable, args = command.executable, list(command.args)
        if self.detached:
            args = [sys.executable, "-I", "-S", "-c", TRAMPOLINE, executable, *args]
            executable = sys.executable
        with signalsHeld():
            self._process: IProcessTransport = reactor.spawnProcess(
                _ChildProtocol(self),
                executable,
                args,
                env=env,
                path=command.cwd,
                childFDs=childFDs,
            )
        self.pid: int = self._process.pid or 0
        if not self.detached:
            self.started.callback(self.pid)
        self._timeout: IDelayedCall | None = reactor.callLater(
            timeout, self._timedOut, timeout
        )

    def signal(self, name: str) -> None:
        """
        Send signal C{name} (C{"QUIT"}) to the child, unless it is gone.
        """
        signum = getattr(signal, f"SIG{name}")
        if self.detached:
            if self._pidfd is not None and self._pidfd >= 0:
                try:
                    signal.pidfd_send_signal(self._pidfd, signum)
                except ProcessLookupError:
                    pass
            return
        try:
            self._process.signalProcess(signum)
        except ProcessExitedAlready:
            pass

    def _childStarted(self, text: bytes) -> None:
        """
        Detached: the trampoline named the child (now PID 1's): watch it.
        """
        if self._pidfd is not None or self.started.called:
            return
        try:
            pid = int(text)
            self._pidfd = os.pidfd_open(pid)
        except (ValueError, OSError) as e:
            self._fail(ChildFailed(f"cannot watch the next generation: {e}"))
            return
        self.pid = pid
        # A pidfd reads as an error once the process exits: the pipe watcher's
        # end-of-file, which closes the fd and tells us.
        _handoff.ParentWatcher(self._reactor, self._pidfd, self._detachedEnded)
        self.started.callback(pid)
        if self._failure is not None:
            self._kill()

    def _trampolineExited(self, reason: Failure) -> None:
        """
        Detached: the trampoline exits at once.  Status 0 means it wrote the
        child's pid first (L{_childStarted} follows, if it has not run yet);
        anything else, that there is no child.
        """
        if self._pidfd is not None or howItEnded(reason) == "exited with status 0":
            return
        self._cancelTimeout()
        error = self._failure or ChildFailed(
            f"cannot start the next generation: pid={self.pid} {howItEnded(reason)}"
            + (f": {self.childError}" if self.childError else "")
        )
        self._failure = error
        self.started.errback(Failure(error))
        self.started.addErrback(lambda _: None)
        self.result.errback(Failure(error))

    def _detachedEnded(self) -> None:
        self._pidfd = -1  # the watcher closed it: never signal it again
        self._childEnded(None)

    def _kill(self) -> None:
        # Detached, before the trampoline named the child this does nothing, and
        # _childStarted kills it then: killing the trampoline could orphan a child
        # nobody watches.
        self.signal("KILL")

    def _childReady(self) -> None:
        if self._ready or self._failure is not None:
            return
        self._ready = True
        self._cancelTimeout()
        self.result.callback(self.pid)

    def _timedOut(self, timeout: float) -> None:
        self._timeout = None
        self._fail(
            UpgradeTimeout(
                f"child pid={self.pid} was not ready within {timeout:g} s; killed it"
            )
        )

    def _fail(self, error: Exception) -> None:
        """
        Give up on the child: kill it, and report C{error} once it is reaped.
        """
        if self._ready or self._failure is not None:
            return
        self._failure = error
        self._cancelTimeout()
        self._kill()

    def cancel(self) -> Deferred[int]:
        """
        We are stopping: kill the child unless it is already ready.
        """
        self._fail(Stopping())
        return self.result

    def _childEnded(self, reason: Failure | None) -> None:
        """
        The child is gone; C{reason} is its exit status, None when detached (we
        are not its parent: its reaper gets the status).
        """
        self._cancelTimeout()
        if self._ready and self._afterReady is not None and reason is not None:
            self._afterReady(reason)
            return
        if self._ready:
            how = howItEnded(reason) if reason is not None else "exited"
            if reason is not None and _cleanExit(reason):
                self._log.info(
                    "txflip: pid {pid}, which replaced this generation, {how}",
                    pid=self.pid,
                    how=how,
                )
            else:
                self._log.critical(
                    "txflip: pid {pid}, which replaced this generation, {how} after"
                    " it was ready; nothing serves once this generation exits:"
                    " restart the service",
                    pid=self.pid,
                    how=how,
                )
            return
        if self._failure is None:
            message = describeExit(self.pid, reason)
            if self.childError:
                message = f"{message}: {self.childError}"
            self._failure = ChildFailed(message)
        self.result.errback(Failure(self._failure))

    def _cancelTimeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
