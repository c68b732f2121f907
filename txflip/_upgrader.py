"""
One generation's life, as a state machine: starting, ready, upgrading, replaced,
stopped.

The machine decides what is allowed when (an upgrade before we are ready, while the
previous generation is alive, or while another upgrade runs, is refused with the
reason); the L{Upgrader} class in front of it is the small public API, every
asynchronous step of which is a L{Deferred}.
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from automat import TypeMachineBuilder, pep614
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import _handoff
from ._addresses import ListenSpec, parseListen, systemdAlias
from ._errors import (
    ChildFailed,
    NotReady,
    ParentAlive,
    PidFileError,
    Stopping,
    UpgradeError,
    UpgradeInProgress,
)
from ._fds import Listener, Listeners
from ._pidfile import PidFile
from ._spawn import Command, SpawnAttempt, releaseSignals

DEFAULT_UPGRADE_TIMEOUT = 60.0
T = TypeVar("T")


class _Generation(Protocol):
    def ready(self) -> None:
        """
        This generation serves: tell the parent, write the pid file.
        """

    def parentExited(self) -> None:
        """
        The previous generation is gone (or there never was one).
        """

    def upgrade(self) -> Deferred[int]:
        """
        Start the next generation; fire with its pid once it is ready.
        """

    def stop(self) -> Deferred[None]:
        """
        Stop for good: no more upgrades; a starting child is killed.
        """

    def _childReady(self, pid: int) -> None:
        """
        The child we started says it serves.
        """

    def _childFailed(self, reason: Failure) -> None:
        """
        The child we started is gone without becoming ready.
        """


@dataclass
class _Core:
    reactor: Any
    listeners: Listeners
    handoff: _handoff.Handoff | None
    pidFile: PidFile | None
    command: Command
    environ: MutableMapping[str, str]
    upgradeTimeout: float
    generation: int
    log: Logger
    attempt: SpawnAttempt | None = None
    pending: Deferred[int] | None = None
    successor: int | None = None
    exitWaiters: list[Deferred[None]] | None = field(default_factory=list)
    #: Deferreds to fire once the machine has finished its transition: their
    #: callbacks may call the upgrader again, which automat forbids mid-transition.
    outbox: list[Callable[[], object]] = field(default_factory=list)
    depth: int = 0

    def later(self, action: Callable[[], object]) -> None:
        self.outbox.append(action)
        if self.depth == 0:
            self.flush()

    def flush(self) -> None:
        while self.outbox:
            self.outbox.pop(0)()

    def feed(self, method: Callable[..., T], *args: object) -> T:
        """
        Give the machine one input, then fire what it left in the outbox.
        """
        self.depth += 1
        try:
            return method(*args)
        finally:
            self.depth -= 1
            if self.depth == 0:
                self.flush()

    def finish(self) -> None:
        """
        This process should now exit: fire every L{Upgrader.whenExit} waiter.
        """
        waiters, self.exitWaiters = self.exitWaiters, None
        for waiter in waiters or []:
            self.later(lambda waiter=waiter: waiter.callback(None))  # type: ignore[misc]


def _makeMachine() -> Any:
    machine = TypeMachineBuilder(_Generation, _Core)
    Starting = machine.state("Starting")
    StartingAlone = machine.state("StartingAlone")
    WaitingForParent = machine.state("WaitingForParent")
    Ready = machine.state("Ready")
    Upgrading = machine.state("Upgrading")
    Replaced = machine.state("Replaced")
    Stopped = machine.state("Stopped")

    Starting.upon(_Generation.parentExited).to(StartingAlone).returns(None)
    WaitingForParent.upon(_Generation.parentExited).to(Ready).returns(None)
    for state in (StartingAlone, Ready, Upgrading, Replaced, Stopped):
        state.upon(_Generation.parentExited).loop().returns(None)
    for state in (WaitingForParent, Ready, Upgrading, Replaced, Stopped):
        state.upon(_Generation.ready).loop().returns(None)
    for state in (Starting, StartingAlone, WaitingForParent, Ready, Replaced, Stopped):
        state.upon(_Generation._childReady).loop().returns(None)
        state.upon(_Generation._childFailed).loop().returns(None)

    @pep614(Starting.upon(_Generation.ready).to(WaitingForParent))
    @pep614(StartingAlone.upon(_Generation.ready).to(Ready))
    def becomeReady(c: _Generation, s: _Core) -> None:
        # Upgrader.ready() has written the pid file: what can fail is done.  Log
        # first, so that the shared log tells the story in order.
        s.log.info(
            "txflip: generation {generation} ready (pid {pid})",
            generation=s.generation,
            pid=os.getpid(),
        )
        if s.handoff is not None:
            _handoff.tellParentReady(s.handoff)

    @pep614(Starting.upon(_Generation.upgrade).loop())
    @pep614(StartingAlone.upon(_Generation.upgrade).loop())
    def notReady(c: _Generation, s: _Core) -> Deferred[int]:
        return fail(NotReady())

    @pep614(WaitingForParent.upon(_Generation.upgrade).loop())
    def parentAlive(c: _Generation, s: _Core) -> Deferred[int]:
        return fail(ParentAlive())

    @pep614(Upgrading.upon(_Generation.upgrade).loop())
    def inProgress(c: _Generation, s: _Core) -> Deferred[int]:
        return fail(UpgradeInProgress())

    @pep614(Replaced.upon(_Generation.upgrade).loop())
    @pep614(Stopped.upon(_Generation.upgrade).loop())
    def stopping(c: _Generation, s: _Core) -> Deferred[int]:
        return fail(Stopping())

    @pep614(Ready.upon(_Generation.upgrade).to(Upgrading))
    def startUpgrade(c: _Generation, s: _Core) -> Deferred[int]:
        s.pending = Deferred()
        try:
            s.attempt = SpawnAttempt(
                s.reactor,
                s.command,
                s.environ,
                s.generation + 1,
                s.listeners.handoffTable(),
                s.upgradeTimeout,
                aliases=s.listeners.handoffAliases(),
            )
        except Exception as e:  # noqa: BLE001 - any reason to fail is reported
            c._childFailed(
                Failure(ChildFailed(f"cannot start the next generation: {e}"))
            )
        else:
            s.log.info(
                "txflip: upgrade: started generation {generation} as pid {pid}",
                generation=s.generation + 1,
                pid=s.attempt.pid,
            )
            s.attempt.result.addCallbacks(
                lambda pid: s.feed(c._childReady, pid),
                lambda reason: s.feed(c._childFailed, reason),
            )
        return s.pending

    @pep614(Upgrading.upon(_Generation._childReady).to(Replaced))
    def replaced(c: _Generation, s: _Core, pid: int) -> None:
        s.successor = pid
        s.log.info(
            "txflip: upgrade: pid {pid} is ready; this process will exit", pid=pid
        )
        pending, s.pending, s.attempt = s.pending, None, None
        assert pending is not None
        s.later(lambda: pending.callback(pid))
        s.finish()

    @pep614(Upgrading.upon(_Generation._childFailed).to(Ready))
    def upgradeFailed(c: _Generation, s: _Core, reason: Failure) -> None:
        s.log.error(
            "txflip: upgrade failed: {reason}; still serving (pid {pid})",
            reason=reason.getErrorMessage(),
            pid=os.getpid(),
        )
        if s.pidFile is not None:
            # A child may have written the pid file before dying: name us again.
            try:
                s.pidFile.write(os.getpid())
            except PidFileError as e:
                s.log.error("txflip: {error}", error=str(e))
        pending, s.pending, s.attempt = s.pending, None, None
        assert pending is not None
        s.later(lambda: pending.errback(reason))

    @pep614(Starting.upon(_Generation.stop).to(Stopped))
    @pep614(StartingAlone.upon(_Generation.stop).to(Stopped))
    @pep614(WaitingForParent.upon(_Generation.stop).to(Stopped))
    @pep614(Ready.upon(_Generation.stop).to(Stopped))
    def stopNow(c: _Generation, s: _Core) -> Deferred[None]:
        s.finish()
        return succeed(None)

    @pep614(Replaced.upon(_Generation.stop).loop())
    @pep614(Stopped.upon(_Generation.stop).loop())
    def alreadyStopping(c: _Generation, s: _Core) -> Deferred[None]:
        return succeed(None)

    @pep614(Upgrading.upon(_Generation.stop).to(Stopped))
    def stopDuringUpgrade(c: _Generation, s: _Core) -> Deferred[None]:
        attempt, pending = s.attempt, s.pending
        s.attempt = s.pending = None
        assert attempt is not None and pending is not None
        s.log.info(
            "txflip: stopping: killing starting child pid {pid}", pid=attempt.pid
        )
        done: Deferred[None] = Deferred()

        def childGone(result: object) -> None:
            s.later(lambda: pending.errback(Failure(Stopping())))
            s.finish()
            s.later(lambda: done.callback(None))

        # The machine's own callbacks on attempt.result see us Stopped and ignore it.
        attempt.cancel().addBoth(childGone)
        return done

    return machine.build()


_Machine = _makeMachine()


class Upgrader:
    """
    Graceful upgrades for one process: hand our listening sockets to a new copy of
    ourselves, and exit once it serves.

    Typical use::

        upgrader = Upgrader(reactor, pidFile="app.pid")
        listener = upgrader.listen("tcp:8080:interface=127.0.0.1")
        listener.adoptStream(reactor, factory)
        reactor.callWhenRunning(upgrader.ready)
        upgrader.whenExit().addCallback(lambda _: reactor.stop())
        # on SIGHUP: upgrader.upgrade()

    The L{txflip.UpgradeService} does all of this (and the draining) for twistd.

    @ivar generation: 1 for a process started by hand, N+1 for the child of N.
    @ivar hasParent: whether a previous generation started this one.
    @ivar listeners: the L{Listeners} of this generation.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any = None,
        *,
        pidFile: str | None = None,
        upgradeTimeout: float = DEFAULT_UPGRADE_TIMEOUT,
        environ: MutableMapping[str, str] | None = None,
        command: Command | None = None,
    ) -> None:
        """
        Read the handoff from the environment (removing the marker) and take over
        the inherited fds.

        @raise HandoffError: the inherited state is unusable (one-line reason).
        @raise PidFileError: the pid file names another live server, or cannot be
            written.
        """
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        if upgradeTimeout <= 0:
            raise ValueError("upgradeTimeout must be positive")
        environ = os.environ if environ is None else environ
        self._cwd = os.getcwd()
        handoff = _handoff.fromEnvironment(environ)
        self.hasParent = handoff is not None
        self.generation = handoff.generation if handoff is not None else 1
        if handoff is not None:
            self.listeners = Listeners(handoff.listeners)
        else:
            # A first generation may have been given sockets by systemd.
            from .systemd import listenFDs

            self.listeners = Listeners(listenFDs(environ))
        self._parentWaiters: list[Deferred[None]] | None = []
        self._declaredReady = False
        pid = PidFile(pidFile) if pidFile else None
        if pid is not None:
            pid.check(allowed=(os.getppid(),) if handoff is not None else ())
        self._core = _Core(
            reactor,
            self.listeners,
            handoff,
            pid,
            command or Command.current(self._cwd),
            environ,
            upgradeTimeout,
            self.generation,
            self._log,
        )
        self._machine: _Generation = _Machine(self._core)
        # The parent may be gone already (killed while we started): then getppid()
        # names whoever adopted us, and only the table knows who the parent was.
        self._parentPID = (handoff and handoff.parentPID) or os.getppid()
        if handoff is None:
            self._parentExited()
        else:
            _handoff.ParentWatcher(reactor, handoff.parentFD, self._parentPipeClosed)

    def _parentPipeClosed(self) -> None:
        """
        The parent's end of the pipe is closed: it is exiting.  It is gone once we
        are reparented; wait for that (briefly), so that "the previous generation
        exited" is exactly true when we allow the next upgrade.
        """
        deadline = self._core.reactor.seconds() + 5.0

        def check() -> None:
            if (
                os.getppid() != self._parentPID
                or self._core.reactor.seconds() > deadline
            ):
                self._parentExited()
            else:
                self._core.reactor.callLater(0.005, check)

        check()

    @property
    def pidFile(self) -> PidFile | None:
        return self._core.pidFile

    @property
    def successor(self) -> int | None:
        """
        The pid of the generation that replaced us, once one has.
        """
        return self._core.successor

    def listen(self, description: str | ListenSpec) -> Listener:
        """
        The listener for C{description} (Twisted endpoint syntax, e.g.
        C{tcp:8080:interface=127.0.0.1}, C{unix:/run/app.sock}, C{udp:5353}):
        the parent's socket if it passed one for the same address, else a new one.

        @raise ListenError: bad description, or the address cannot be bound.
        """
        if isinstance(description, str) and description.startswith("systemd:"):
            return self.listeners.listenAlias(systemdAlias(description))
        spec = (
            description
            if isinstance(description, ListenSpec)
            else parseListen(description, self._cwd)
        )
        return self.listeners.listen(spec)

    def ready(self) -> None:
        """
        Declare that this generation serves: close inherited sockets nobody claimed,
        write the pid file, and tell the parent, which then stops accepting and
        drains.

        @raise PidFileError: the pid file cannot be written (the parent is then not
            told, so it keeps serving, and this generation is still not ready).
        """
        if not self._declaredReady and self._core.exitWaiters is not None:
            # The step that can fail comes before the state changes.
            if self._core.pidFile is not None:
                self._core.pidFile.write(os.getpid())
            self._declaredReady = True
            self._closeUnclaimed()
            # The signals blocked since we were spawned: by now the reactor runs,
            # with its SIGTERM/SIGINT handlers, and the application has its own.
            releaseSignals()
        self._core.feed(self._machine.ready)

    def upgrade(self) -> Deferred[int]:
        """
        Start the next generation with our listening sockets.

        @return: fires with the new process's pid once it is ready (L{whenExit}
            fires too), or fails with an L{UpgradeError} saying why; this process
            keeps serving then.
        """
        if os.getpid() == 1:
            return fail(
                UpgradeError(
                    "running as PID 1: when this process exits the kernel kills every"
                    " process of its namespace, the new generation too; run under an"
                    " init (docker run --init, tini)"
                )
            )
        if self._parentWaiters is not None and self._parentGone():
            # The parent is gone but we have not noticed yet (its pipe's EOF or
            # our reparenting is still to be seen by the reactor): notice now, so
            # that an upgrade asked for right after the old pid vanished is not
            # refused.
            self._parentExited()
        return self._core.feed(self._machine.upgrade)

    def _parentGone(self) -> bool:
        return self.hasParent and os.getppid() != self._parentPID

    def whenExit(self) -> Deferred[None]:
        """
        Fires when this process should exit: after a successful upgrade, or after
        L{stop}.
        """
        if self._core.exitWaiters is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._core.exitWaiters.append(waiter)
        return waiter

    def whenParentExited(self) -> Deferred[None]:
        """
        Fires once the previous generation has exited (at once if there is none).
        Until then, L{upgrade} is refused.
        """
        if self._parentWaiters is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._parentWaiters.append(waiter)
        return waiter

    def stop(self) -> Deferred[None]:
        """
        No more upgrades.  A child still starting is killed; fires once it is gone.
        """
        return self._core.feed(self._machine.stop)

    @property
    def isReady(self) -> bool:
        """
        Whether L{ready} has succeeded: this generation serves.
        """
        return self._declaredReady

    def _closeUnclaimed(self) -> None:
        """
        Close inherited sockets nobody asked for, once we serve I{and} the parent
        is gone: until then a listener may still be asked for late (after an
        C{await}), and the parent serves them anyway.
        """
        if not self._declaredReady or self._parentWaiters is not None:
            return
        for spec in self.listeners.closeUnclaimed():
            self._log.info(
                "txflip: closed inherited {spec}: not configured any more", spec=spec
            )

    def _parentExited(self) -> None:
        if self._parentWaiters is None:
            return
        waiters, self._parentWaiters = self._parentWaiters, None
        self._closeUnclaimed()
        self._core.feed(self._machine.parentExited)
        for waiter in waiters or []:
            waiter.callback(None)
