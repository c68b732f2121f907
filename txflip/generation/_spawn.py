"""
Starting the next generation and waiting for it to say it serves.

The child runs the generation's L{Command} with our environment plus the handoff
marker, sharing our stdin/stdout/stderr.  Its fds are placed with
C{spawnProcess(childFDs=...)}: 3 is a pipe we read (it writes C{ready}), 4 a pipe
only we hold the write end of (it reads EOF when we exit), 5 onwards the listening
sockets and the named extra fds.  Twisted closes every other fd in the child, so
nothing else of ours leaks into it.

The pipes are ours (L{ChildPipes}), not Twisted's C{"r"}/C{"w"}, whose C{processEnded}
waits for every pipe to close: a grandchild holding them (a shell's background job)
would hide the child's death as long as it lives.  Reaped, we read what it wrote
before it died and close our ends.  Under systemd the child is started detached
(L{txflip.generation._detach}); a failure is told in the words of L{txflip.generation._exits}.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txflip._errors import ChildFailed, Stopping, UpgradeTimeout
from txflip._reactor import Reactor
from txflip.generation import _handoff
from txflip.generation._childpipes import ChildPipes
from txflip.generation._command import Command
from txflip.generation._detach import (
    PID_PREFIX,
    PidWatch,
    shouldDetach,
    throughTrampoline,
)
from txflip.generation._exits import cleanExit, describeExit, howItEnded
from txflip.generation._signals import signalsHeld
from txflip.listen._fds import Listener


class Spawn(NamedTuple):
    """
    What to start as the next generation: all a L{Spawner} is told besides the
    reactor, in one value.
    """

    command: Command
    environ: Mapping[str, str]
    #: The next generation's number.
    generation: int
    listeners: Sequence[Listener]
    #: Seconds the child has to say it is ready.
    timeout: float
    #: Our fds to pass besides the listeners, by the name the child finds them
    #: under (the handoff table's C{fds}).
    extraFDs: Mapping[str, int] = MappingProxyType({})
    #: The child's fd 2, if not ours (a supervisor reads its workers' stderr).
    stderr: int | None = None


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

    def __call__(self, reactor: Reactor, spawn: Spawn) -> Attempt: ...


class ChildOutcome:
    """
    What every way of starting a child shares: its ready pipe's lines, its
    deadline, and the one outcome they decide (L{result}: ready, or failed once
    it is gone).  Subclasses set the attributes below and L{_kill}.
    """

    pid: int
    result: Deferred[int]
    #: The reason the child gave for failing to start, if it gave one.
    childError: str | None
    _ready: bool
    _failure: Exception | None
    _timeout: IDelayedCall | None

    def _readyLine(self, line: bytes) -> None:
        """
        One line from the ready pipe: C{ready}, or the reason it cannot start.
        """
        if line + b"\n" == _handoff.READY_MESSAGE:
            self._childReady()
        elif line.startswith(_handoff.ERROR_PREFIX):
            error = line[len(_handoff.ERROR_PREFIX) :]
            self.childError = error.decode("utf-8", "replace")

    def _kill(self) -> None:
        raise NotImplementedError

    def _childReady(self) -> None:
        if self._ready or self._failure is not None:
            return
        self._ready = True
        self._cancelTimeout()
        self.result.callback(self.pid)

    def _timedOut(self, timeout: float) -> None:
        self._timeout = None
        self._fail(UpgradeTimeout(self._lateMessage(timeout)))

    def _lateMessage(self, timeout: float) -> str:
        return f"child pid={self.pid} was not ready within {timeout:g} s; killed it"

    def _fail(self, error: Exception) -> None:
        """
        Give up on the child: kill it, and report C{error} once it is reaped.
        """
        if self._ready or self._failure is not None:
            return
        self._failure = error
        self._cancelTimeout()
        self._kill()

    def _failedBeforeReady(self, reason: Failure | None) -> None:
        """
        The child is gone before it was ready: fail L{result} with the reason.
        """
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


class _ChildProtocol(ProcessProtocol):
    """
    Turns the child's process events into one outcome: ready, or failed.
    """

    def __init__(self, attempt: SpawnAttempt) -> None:
        self._attempt = attempt
        self._buffer = b""
        #: The child's pid, kept when we are connected: Twisted sets its
        #: transport's to None once it reaps the child, which for a child that
        #: exits at once happens inside spawnProcess, before it returns.
        self.pid = 0

    def makeConnection(self, transport: IProcessTransport) -> None:
        self.pid = transport.pid or 0
        super().makeConnection(transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == _handoff.READY_FD:
            self._buffer += data
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                if line.startswith(PID_PREFIX) and self._attempt.detached:
                    self._attempt._childStarted(line[len(PID_PREFIX) :])
                else:
                    self._attempt._readyLine(line)
            if len(self._buffer) > _handoff.MAX_ERROR + 64:
                self._attempt._fail(
                    ChildFailed(
                        f"child pid={self._attempt.pid} sent garbage on the ready pipe"
                    )
                )

    # Both from the reactor: a child that exits at once is reaped inside
    # spawnProcess (no pipe of Twisted's holds processEnded back), before the
    # attempt has even been set up.
    def processExited(self, reason: Failure) -> None:
        if self._attempt.detached:
            self._attempt.later(self._attempt._trampolineExited, reason)

    def processEnded(self, reason: Failure) -> None:
        if not self._attempt.detached:
            self._attempt.later(self._attempt._childEnded, reason)


class SpawnAttempt(ChildOutcome):
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
        spawn: Spawn,
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
            shouldDetach(spawn.environ) if detach is None else detach
        )
        #: Detached: the child, once the trampoline named it.
        self._watch: PidWatch | None = None
        self._reactor = reactor
        self._failure: Exception | None = None
        self._ready = False
        #: The reason the child gave for failing to start, if it gave one.
        self.childError: str | None = None
        command = spawn.command
        env = dict(spawn.environ)
        env.update(command.extraEnv)
        env[_handoff.MARKER], childFDs = _handoff.plan(
            spawn.generation, spawn.listeners, spawn.extraFDs
        )
        protocol = _ChildProtocol(self)
        self._pipes = ChildPipes(
            reactor, lambda data: protocol.childDataReceived(_handoff.READY_FD, data)
        )
        childFDs[_handoff.READY_FD] = self._pipes.readyChildEnd
        childFDs[_handoff.PARENT_FD] = self._pipes.parentChildEnd
        if spawn.stderr is not None:
            childFDs[2] = spawn.stderr
        executable, args = command.executable, list(command.args)
        if self.detached:
            executable, args = throughTrampoline(executable, args)
        try:
            with signalsHeld():
                self._process: IProcessTransport = reactor.spawnProcess(
                    protocol,
                    executable,
                    args,
                    env=env,
                    path=command.cwd,
                    childFDs=childFDs,
                )
        except BaseException:
            self._pipes.started()
            self._pipes.close()
            raise
        self._pipes.started()
        self.pid: int = protocol.pid
        if not self.detached:
            self.started.callback(self.pid)
        self._timeout: IDelayedCall | None = reactor.callLater(
            spawn.timeout, self._timedOut, spawn.timeout
        )

    def later(self, event: Callable[[Failure], None], reason: Failure) -> None:
        self._reactor.callLater(0, event, reason)

    def signal(self, name: str) -> None:
        """
        Send signal C{name} (C{"QUIT"}) to the child, unless it is gone.
        """
        signum = getattr(signal, f"SIG{name}")
        if self.detached:
            if self._watch is not None:
                self._watch.signal(signum)
            return
        try:
            self._process.signalProcess(signum)
        except ProcessExitedAlready:
            pass

    def _childStarted(self, text: bytes) -> None:
        """
        Detached: the trampoline named the child (now PID 1's): watch it.
        """
        if self._watch is not None or self.started.called:
            return
        try:
            self._watch = PidWatch(
                self._reactor, int(text), lambda: self._childEnded(None)
            )
        except (ValueError, OSError) as e:
            self._fail(ChildFailed(f"cannot watch the next generation: {e}"))
            return
        self.pid = self._watch.pid
        self.started.callback(self.pid)
        if self._failure is not None:
            self._kill()

    def _trampolineExited(self, reason: Failure) -> None:
        """
        Detached: the trampoline exits at once.  Status 0 means it wrote the
        child's pid first (L{_childStarted} follows, if it has not run yet);
        anything else, that there is no child.
        """
        if self._watch is not None or cleanExit(reason):
            return
        self._pipes.close()
        self._cancelTimeout()
        error = self._failure or ChildFailed(
            f"cannot start the next generation: pid={self.pid} {howItEnded(reason)}"
            + (f": {self.childError}" if self.childError else "")
        )
        self._failure = error
        self.started.errback(Failure(error))
        self.started.addErrback(lambda _: None)
        self.result.errback(Failure(error))

    def _kill(self) -> None:
        # Detached, before the trampoline named the child this does nothing, and
        # _childStarted kills it then: killing the trampoline could orphan a child
        # nobody watches.
        self.signal("KILL")

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
        self._pipes.close()  # first: what it wrote before it died decides
        self._cancelTimeout()
        if self._ready and self._afterReady is not None and reason is not None:
            self._afterReady(reason)
            return
        if self._ready:
            how = howItEnded(reason) if reason is not None else "exited"
            if reason is not None and cleanExit(reason):
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
        self._failedBeforeReady(reason)
