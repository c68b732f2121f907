"""
One generation's life, as a typed automat state machine; the L{Upgrader} in front
of it is the small public API, every asynchronous step of which is a L{Deferred}.

States (data in brackets) and the inputs that move between them::

    Starting ──parentExited──► StartingAlone          (a first generation starts
       │                          │                    in StartingAlone)
     ready                      ready
       ▼                          ▼
    WaitingForParent ──parentExited──► Ready ◄──────────────┐
                                        │                    │ _childFailed
                                     upgrade/join            │ (still serving)
                                        ▼                    │
                          Upgrading [attempt, waiters] ──────┘
                                   │         │
                       _childReady │         │ stop (then _kill)
                                   ▼         ▼
             Replaced [successor pid]     Killing [upgrade, stop's Deferred]
                                              │ _childGone (child reaped)
                                              ▼
                                           Stopped

    A worker of a supervisor (txflip run: the table names a SUPERVISOR fd):

    Starting ──_enlist──► WorkerStarting [link] ──ready──► Working [link]
                               │                               │
                 stop / parentPipeClosed          stop / parentPipeClosed
                               ▼                               ▼
                           Abandoned                        Stopped

    stop: Starting, StartingAlone ──► Abandoned (never served);
          WaitingForParent, Ready ──► Stopped.

C{parentPipeClosed} (our end of the parent's pipe reads end-of-file) is the
parent's exit once it has exited (L{_Core.awaitParentExit}: a zombie, gone, or 5 s
later), then C{parentExited}; in a worker's states it is the supervisor's death:
the worker stops gracefully (as C{stop} would; C{whenExit} fires); in Stopped or
Abandoned it is only news to whoever still waits in C{whenParentExited} (never a
worker, whose pipe the reactor closes itself as it shuts down).

Refusals (outputs, the state stays): C{upgrade} in Starting/StartingAlone fails
with L{NotReady}, in WaitingForParent with L{ParentAlive} (unless the parent turns
out to be gone: then it is noticed and the upgrade starts), in Upgrading with
L{UpgradeInProgress} (C{join} waits for its outcome instead), in a worker's states
(C{join} too) with L{WorkerOfSupervisor}, after the end with L{Stopping}.
C{whenExit} fires on entering Replaced, Stopped or Abandoned; C{whenParentExited}
on leaving Starting or WaitingForParent (at once if the parent is gone; after the
end it fails with L{Stopping}; a worker's never fires: its parent's end is its
own).

Every input returns L{None} (a command is given the L{Deferred} it settles) except
the queries C{isReady} and C{successor}; automat queues an input given while a
transition runs.  Deferreds are settled after the transition (L{_Core.later}), so
that their callbacks may call the upgrader again, queries included.
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from txflip._reactor import reactorOrGlobal
from txflip._settings import DEFAULT_UPGRADE_TIMEOUT, seconds
from txflip.generation._command import Command
from txflip.generation._handoff import SUPERVISOR, ParentWatcher
from txflip.generation._pidfile import PidFile
from txflip.generation._process import ProcessState, thisProcess
from txflip.generation._rules import makeGeneration
from txflip.generation._spawn import SpawnAttempt, Spawner
from txflip.generation._states import OnStart, _Core
from txflip.listen._addresses import ListenSpec, parseListen
from txflip.listen._fds import Listener, Listeners
from txflip.run._channel import SupervisorLink
from txflip.systemd import listenFDs


class Upgrader:
    """
    Graceful upgrades for one process: hand our listening sockets to a new copy of
    ourselves, and exit once it serves.  One per process (a second is refused).

    Typical use::

        upgrader = Upgrader(reactor, pidFile="app.pid")
        listener = upgrader.listen("tcp:8080:interface=127.0.0.1")
        listener.adoptStream(reactor, factory)
        reactor.callWhenRunning(upgrader.ready)
        upgrader.whenExit().addCallback(lambda _: reactor.stop())
        # on SIGHUP: upgrader.upgrade()

    The L{txflip.UpgradeService} does all of this (and the draining) for twistd.

    @ivar reactor: the reactor this generation runs on.
    @ivar generation: 1 for a process started by hand, N+1 for the child of N.
    @ivar listeners: the L{Listeners} of this generation.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: object | None = None,
        *,
        pidFile: str | None = None,
        upgradeTimeout: float = DEFAULT_UPGRADE_TIMEOUT,
        environ: MutableMapping[str, str] | None = None,
        command: Command | None = None,
        spawner: Spawner = SpawnAttempt,
        process: ProcessState | None = None,
    ) -> None:
        """
        Read the handoff from the environment (removing the marker) and take over
        the inherited fds.

        @param reactor: the reactor (default: Twisted's global one).
        @param spawner: starts the next generation (tests pass a fake).
        @param process: this process's state (tests pass a fresh one).
        @raise TxflipError: this process has an Upgrader already.
        @raise HandoffError: the inherited state is unusable (one-line reason).
        @raise PidFileError: the pid file names another live server, or cannot be
            written.
        """
        upgradeTimeout = seconds("upgradeTimeout", upgradeTimeout)
        self.reactor = reactorOrGlobal(reactor)
        environ = os.environ if environ is None else environ
        self._cwd = os.getcwd()
        handoff = (thisProcess if process is None else process).claim(environ)
        self.generation = handoff.generation if handoff is not None else 1
        # A first generation may have been given sockets by systemd.
        inherited = handoff.listeners if handoff is not None else listenFDs(environ)
        supervisor: SupervisorLink | None = None
        if handoff is not None and SUPERVISOR in handoff.extraFDs:
            supervisor = SupervisorLink(handoff.extraFDs[SUPERVISOR], handoff.parentPID)
            pidFile = None
            self.listeners = Listeners(inherited, bind=supervisor.listen, unlinks=False)
        else:
            self.listeners = Listeners(inherited)
        # The parent may be gone already (killed while we started), or never was
        # our parent process (started detached): the table says who it is.
        parentPID = None
        if handoff is not None:
            parentPID = handoff.parentPID or os.getppid()
        pid = PidFile(pidFile) if pidFile else None
        if pid is not None:
            pid.check(allowed=(parentPID,) if parentPID is not None else ())
        self._core = _Core(
            self.reactor,
            self.listeners,
            handoff,
            pid,
            command or Command.current(self._cwd),
            environ,
            upgradeTimeout,
            self.generation,
            spawner,
            parentPID,
            self._log,
            supervisor,
        )
        self._machine = makeGeneration(self._core)
        if handoff is not None:
            ParentWatcher(self.reactor, handoff.parentFD, self._parentPipeClosed)

    def _parentPipeClosed(self) -> None:
        self._core.feed(self._machine.parentPipeClosed)

    @property
    def supervisor(self) -> SupervisorLink | None:
        """
        The supervisor whose worker we are (C{txflip run}), if any: it owns the
        sockets, the pid file and the upgrades.
        """
        return self._core.supervisor

    @property
    def hasParent(self) -> bool:
        """
        Whether a previous generation started this one.
        """
        return self._core.handoff is not None

    def wrapSpawner(self, wrap: Callable[[Spawner], Spawner]) -> None:
        """
        Start later generations through C{wrap(current spawner)}: how moving
        connections gives each next generation its channel.
        """
        self._core.spawner = wrap(self._core.spawner)

    def claimInheritedFD(self, name: str) -> int | None:
        """
        The fd the previous generation passed under C{name} (the handoff table's
        C{fds}), once: the caller owns it.
        """
        handoff = self._core.handoff
        return None if handoff is None else handoff.extraFDs.pop(name, None)

    @property
    def parentPID(self) -> int | None:
        """
        The pid of the generation that started this one, if one did.
        """
        return self._core.parentPID

    @property
    def pidFile(self) -> PidFile | None:
        return self._core.pidFile

    @property
    def successor(self) -> int | None:
        """
        The pid of the generation that replaced us, once one has.
        """
        return self._core.feed(self._machine.successor)

    @property
    def isReady(self) -> bool:
        """
        Whether L{ready} has succeeded: this generation serves (or served).
        """
        return self._core.feed(self._machine.isReady)

    def listen(self, description: str | ListenSpec) -> Listener:
        """
        The listener for C{description} (Twisted endpoint syntax, e.g.
        C{tcp:8080:interface=127.0.0.1}, C{unix:/run/app.sock}, C{udp:5353},
        C{systemd:name=web}): the parent's socket if it passed one for the same
        address, else a new one.

        @raise ListenError: bad description, or the address cannot be bound.
        """
        if isinstance(description, str):
            description = parseListen(description, self._cwd)
        return self.listeners.listen(description)

    def ready(self) -> None:
        """
        Declare that this generation serves: write the pid file, tell the parent
        (which then stops accepting and drains), and close inherited sockets nobody
        claimed once the parent is gone.

        @raise PidFileError: the pid file cannot be written (the parent is then not
            told, so it keeps serving, and this generation is still not ready).
        """
        self._core.feed(self._machine.ready)

    def upgrade(
        self, join: bool = False, onStart: OnStart | None = None
    ) -> Deferred[int]:
        """
        Start the next generation with our listening sockets.

        @param join: if an upgrade is in progress, wait for its outcome instead
            of being refused.
        @param onStart: called with the next generation's number if this call
            starts an upgrade (before its outcome).
        @return: fires with the new process's pid once it is ready (L{whenExit}
            fires too), or fails with an L{UpgradeError} saying why (a L{Refused}
            when nothing was started); this process keeps serving then.
        """
        result: Deferred[int] = Deferred()
        self._core.feed(
            self._machine.join if join else self._machine.upgrade, result, onStart
        )
        return result

    def whenExit(self) -> Deferred[None]:
        """
        Fires when this process should exit: after a successful upgrade, or after
        L{stop}.
        """
        return self._deferred(self._machine.whenExit)

    def whenParentExited(self) -> Deferred[None]:
        """
        Fires once the previous generation has exited (at once if there is none).
        Until then, L{upgrade} is refused.  Fails with L{Stopping} once stopped.
        """
        return self._deferred(self._machine.whenParentExited)

    def stop(self) -> Deferred[None]:
        """
        No more upgrades.  A child still starting is killed; fires once it is gone.
        """
        return self._deferred(self._machine.stop)

    def _deferred(self, method: Callable[[Deferred[None]], None]) -> Deferred[None]:
        result: Deferred[None] = Deferred()
        self._core.feed(method, result)
        return result
