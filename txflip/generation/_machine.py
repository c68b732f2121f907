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

    A generation its parent owns (L{Parent.begin} gives C{owned}: a supervisor's
    worker, txflip run):

    Starting ──owned──► OwnedStarting [owner] ──ready──► Owned [owner]
                               │                               │
                 stop / parentPipeClosed          stop / parentPipeClosed
                               ▼                               ▼
                           Abandoned                        Stopped

    stop: Starting, StartingAlone ──► Abandoned (never served);
          WaitingForParent, Ready ──► Stopped.

The L{Parent}, chosen once at start (L{parentOf}), gives the first input: a first
generation's C{parentExited}, an owned one's C{owned}, none for a child.
C{parentPipeClosed} (our end of the parent's pipe reads end-of-file) is the
parent's exit once it has exited (L{awaitParentExit}: a zombie, gone, or 5 s
later), then C{parentExited}; in an owned generation's states it is the owner's
death: it stops gracefully (as C{stop} would; C{whenExit} fires); in Stopped or
Abandoned it is only news to whoever still waits in C{whenParentExited} (never an
owned generation, whose pipe the reactor closes itself as it shuts down).

Refusals (outputs, the state stays): C{upgrade} in Starting/StartingAlone fails
with L{NotReady}, in WaitingForParent with L{ParentAlive} (unless the parent turns
out to be gone: then it is noticed and the upgrade starts), in Upgrading with
L{UpgradeInProgress} (C{join} waits for its outcome instead), in an owned
generation's states (C{join} too) with its owner's refusal (L{Owner.upgradeRefused}:
a L{WorkerOfSupervisor}), after the end with L{Stopping}.
C{whenExit} fires on entering Replaced, Stopped or Abandoned; C{whenParentExited}
on leaving Starting or WaitingForParent (at once if the parent is gone; after the
end it fails with L{Stopping}; an owned generation's never fires: its parent's end
is its own).

Every input returns L{None} (a command is given the L{Deferred} it settles) except
the queries C{isReady} and C{successor}; automat queues an input given while a
transition runs.  Deferreds are settled after the transition (L{_Core.later}), so
that their callbacks may call the upgrader again, queries included.
"""

# No "from __future__ import annotations" here: automat reads the signature of
# every transition's output as it builds the machine (once per transition, 120 of
# them, in every process), and string annotations cost it an eval() each: about
# 500 of them, 2 ms of every start.

import functools
import os
import socket
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeVar

from automat import TypeMachineBuilder, pep614
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python.failure import Failure

from txflip._errors import (
    ChildFailed,
    NotReady,
    ParentAlive,
    RunningAsInit,
    SpawnFailed,
    Stopping,
    UpgradeInProgress,
)
from txflip._reactor import Reactor, reactorOrGlobal
from txflip._settings import DEFAULT_UPGRADE_TIMEOUT, seconds
from txflip.generation import _steps
from txflip.generation._command import Command
from txflip.generation._ending import (
    STOPPED,
    Ending,
    Successor,
    closeAll,
    openChannels,
)
from txflip.generation._handoff import Handoff, ParentWatcher
from txflip.generation._parent import (
    Owner,
    Parent,
    awaitParentExit,
    parentGone,
    parentOf,
)
from txflip.generation._pidfile import PidFile
from txflip.generation._process import ProcessState, thisProcess
from txflip.generation._spawn import Attempt, Spawn, SpawnAttempt, Spawner
from txflip.listen._addresses import ListenSpec, parseListen
from txflip.listen._fds import Listener, Listeners
from txflip.systemd import listenFDs

T = TypeVar("T")
#: Our ends of the channels opened to a next generation, by name.
Channels = dict[str, socket.socket]
#: Told of our end of a channel as a next generation starts, and of the start's
#: outcome (its pid, or why it failed; to pass on).  The end is the machine's to
#: close if the start fails, and comes with the Successor if it succeeds.
ChannelOpened = Callable[[socket.socket, "Deferred[int]"], object]
#: Called with the next generation's number when a request starts an upgrade.
OnStart = Callable[[int], object]


class _Generation(Protocol):
    def ready(self) -> None:
        "Write the pid file (this may raise), then declare that we serve."

    def _served(self) -> None:
        "The pid file is written: tell the parent, we serve."

    def owned(self, owner: Owner) -> None:
        "This generation's parent, C{owner}, replaces it (a supervisor's worker)."

    def _owned(self, owner: Owner) -> None:
        "An owned generation has told its owner that it serves."

    def parentPipeClosed(self) -> None:
        "Our end of the parent's pipe reads end-of-file: the parent is exiting."

    def parentExited(self) -> None:
        "The previous generation is gone."

    def upgrade(self, result: Deferred[int], onStart: OnStart | None) -> None:
        "Start the next generation; C{result} fires with its pid once it is ready."

    def join(self, result: Deferred[int], onStart: OnStart | None) -> None:
        "As L{upgrade}, but an upgrade in progress is waited for, not refused."

    def _spawned(
        self, attempt: Attempt, result: Deferred[int], channels: Channels
    ) -> None:
        "The next generation is starting (our ends of its channels: C{channels})."

    def _childReady(self, successor: Successor) -> None:
        "The child we started says it serves."

    def _childFailed(self, reason: Failure) -> None:
        "The child we started is gone without becoming ready."

    def stop(self, result: Deferred[None]) -> None:
        "Stop for good: no more upgrades; a starting child is killed."

    def _kill(self, upgrade: "_Upgrade", result: Deferred[None]) -> None:
        "Stopping while a child starts: kill it."

    def _childGone(self) -> None:
        "The child killed by L{stop} is reaped."

    def whenExit(self, result: Deferred[Ending]) -> None:
        "C{result} fires when this process should exit, with how it ended."

    def whenParentExited(self, result: Deferred[None]) -> None:
        "C{result} fires once the previous generation has exited."

    def isReady(self) -> bool:
        "Whether this generation has declared that it serves."

    def successor(self) -> int | None:
        "The pid of the generation that replaced us, once one has."


class _Upgrade(NamedTuple):
    """
    An upgrade in progress: the starting child, and who waits for its outcome.
    """

    attempt: Attempt
    waiters: list[Deferred[int]]
    #: Our ends of the channels opened to the child (closed if it fails).
    channels: Channels


class _Killing(NamedTuple):
    upgrade: _Upgrade
    stopped: Deferred[None]


@dataclass
class _Core:
    reactor: Reactor
    listeners: Listeners
    handoff: Handoff | None
    pidFile: PidFile | None
    command: Command
    environ: MutableMapping[str, str]
    upgradeTimeout: float
    generation: int
    spawner: Spawner
    #: Who started us, chosen once at start: it decides the machine's first state.
    parent: Parent
    log: Logger
    #: Named fds to pass to the next generation besides the listeners.
    extraFDs: dict[str, int] = field(default_factory=dict)
    exitWaiters: list[Deferred[Ending]] = field(default_factory=list)
    #: The channels to open to each next generation (L{Upgrader.openChannel}).
    channelNames: list[str] = field(default_factory=list)
    #: Who is told of a channel as soon as it is open, by name.
    channelOpened: dict[str, ChannelOpened] = field(default_factory=dict)
    parentWaiters: list[Deferred[None]] = field(default_factory=list)
    #: What to do once the machine has finished its transition (settle
    #: Deferreds): their callbacks may call the upgrader again.
    outbox: list[Callable[[], object]] = field(default_factory=list)
    depth: int = 0

    def later(self, action: Callable[[], object]) -> None:
        assert self.depth, "an input reached the machine without _Core.feed"
        self.outbox.append(action)

    def feed(self, method: Callable[..., T], *args: object) -> T:
        """
        Give the machine one input (every input goes through here), then do what
        the transition left in the outbox.
        """
        self.depth += 1
        try:
            return method(*args)
        finally:
            self.depth -= 1
            while self.depth == 0 and self.outbox:
                self.outbox.pop(0)()

    def settle(self, waiters: list[Deferred[T]], result: T | Failure) -> None:
        """
        Fire every one of C{waiters} with C{result}, once the transition is over.
        """
        for waiter in waiters:
            if isinstance(result, Failure):
                self.later(functools.partial(waiter.errback, result))
            else:
                self.later(functools.partial(waiter.callback, result))
        waiters.clear()

    def fail(self, result: Deferred[T], error: Exception) -> None:
        self.settle([result], Failure(error))

    def parentGone(self) -> bool:
        return parentGone(self.parent.pid)

    def awaitParentExit(self, then: Callable[[], object]) -> None:
        awaitParentExit(self.reactor, self.parent.pid, then)

    def declareServing(self) -> None:
        _steps.declareServing(self.log, self.generation, self.handoff)

    def spawnNext(self) -> tuple[Attempt, Channels]:
        """
        Start the next generation with a fresh channel per name in
        L{channelNames}: it inherits one end under that name, we keep the other.
        """
        try:
            ours, theirs = openChannels(self.channelNames)
        except OSError as e:  # out of fds: no process started, nothing to close
            raise SpawnFailed(f"cannot start the next generation: {e}") from None
        try:
            attempt = _steps.spawnNext(
                self.log,
                self.reactor,
                self.spawner,
                lambda: Spawn(
                    self.command,
                    self.environ,
                    self.generation + 1,
                    self.listeners.forNextGeneration(),
                    self.upgradeTimeout,
                    {**self.extraFDs, **{n: t.fileno() for n, t in theirs.items()}},
                ),
            )
        except BaseException:
            closeAll(ours)
            raise
        finally:
            closeAll(theirs)  # the child has its copies
        for name, opened in self.channelOpened.items():
            # Before the machine's own callbacks on the outcome: a listener sees
            # it first, and passes it on.
            opened(ours[name], attempt.result)
        return attempt, ours

    def stillServing(self, reason: Failure) -> None:
        _steps.stillServing(self.log, self.pidFile, reason)

    def closeUnclaimed(self) -> None:
        _steps.closeUnclaimed(self.log, self.listeners)


def _makeMachine() -> Callable[[_Core], _Generation]:
    machine = TypeMachineBuilder(_Generation, _Core)
    Starting = machine.state("Starting")
    StartingAlone = machine.state("StartingAlone")
    WaitingForParent = machine.state("WaitingForParent")
    Ready = machine.state("Ready")
    Upgrading = machine.state(
        "Upgrading",
        lambda c, s, attempt, result, channels: _Upgrade(attempt, [result], channels),
    )
    Killing = machine.state(
        "Killing", lambda c, s, upgrade, result: _Killing(upgrade, result)
    )
    Replaced = machine.state("Replaced", lambda c, s, successor: successor)
    Stopped = machine.state("Stopped")
    Abandoned = machine.state("Abandoned")
    # A generation whose parent owns it (a supervisor's worker, txflip run): the
    # owner alone replaces it; its pipe's end means the owner died.
    OwnedStarting = machine.state("OwnedStarting", lambda c, s, owner: owner)
    Owned = machine.state("Owned", lambda c, s, owner: owner)
    starting = (Starting, StartingAlone)
    serving = (WaitingForParent, Ready)
    owned = (OwnedStarting, Owned)

    # --- readiness -------------------------------------------------------------

    @pep614(Starting.upon(_Generation.ready).loop())
    @pep614(StartingAlone.upon(_Generation.ready).loop())
    @pep614(OwnedStarting.upon(_Generation.ready, nodata=True).loop())
    def writePidFile(c: _Generation, s: _Core) -> None:
        # The step that can fail comes before the state changes.
        if s.pidFile is not None:
            s.pidFile.write(os.getpid())
        c._served()

    for state in (*serving, Stopped, Abandoned):
        state.upon(_Generation.ready).loop().returns(None)
    for dataState in (Upgrading, Killing, Replaced, Owned):
        dataState.upon(_Generation.ready, nodata=True).loop().returns(None)

    @pep614(Starting.upon(_Generation._served).to(WaitingForParent))
    def served(c: _Generation, s: _Core) -> None:
        s.declareServing()

    @pep614(StartingAlone.upon(_Generation._served).to(Ready))
    def servedAlone(c: _Generation, s: _Core) -> None:
        s.closeUnclaimed()
        served(c, s)

    # --- the parent ------------------------------------------------------------

    @pep614(Starting.upon(_Generation.parentExited).to(StartingAlone))
    def parentGoneEarly(c: _Generation, s: _Core) -> None:
        s.settle(s.parentWaiters, None)

    @pep614(WaitingForParent.upon(_Generation.parentExited).to(Ready))
    def parentGone(c: _Generation, s: _Core) -> None:
        # Inherited sockets nobody asked for are closed once we serve and the
        # parent is gone: until then a listener may still be asked for late.
        s.closeUnclaimed()
        s.settle(s.parentWaiters, None)

    for state in (StartingAlone, Ready):
        state.upon(_Generation.parentExited).loop().returns(None)
    Replaced.upon(_Generation.parentExited, nodata=True).loop().returns(None)

    @pep614(Upgrading.upon(_Generation.parentExited, nodata=True).loop())
    @pep614(Killing.upon(_Generation.parentExited, nodata=True).loop())
    @pep614(Stopped.upon(_Generation.parentExited).loop())
    @pep614(Abandoned.upon(_Generation.parentExited).loop())
    def parentGoneAfterEnd(c: _Generation, s: _Core) -> None:
        s.settle(s.parentWaiters, None)

    @pep614(Starting.upon(_Generation.parentPipeClosed).loop())
    @pep614(WaitingForParent.upon(_Generation.parentPipeClosed).loop())
    @pep614(StartingAlone.upon(_Generation.parentPipeClosed).loop())
    @pep614(Ready.upon(_Generation.parentPipeClosed).loop())
    @pep614(Upgrading.upon(_Generation.parentPipeClosed, nodata=True).loop())
    @pep614(Killing.upon(_Generation.parentPipeClosed, nodata=True).loop())
    @pep614(Replaced.upon(_Generation.parentPipeClosed, nodata=True).loop())
    def parentExiting(c: _Generation, s: _Core) -> None:
        s.later(lambda: s.awaitParentExit(lambda: s.feed(c.parentExited)))

    @pep614(Stopped.upon(_Generation.parentPipeClosed).loop())
    @pep614(Abandoned.upon(_Generation.parentPipeClosed).loop())
    def parentExitingAfterEnd(c: _Generation, s: _Core) -> None:
        # Only news to whoever still waits for the parent (none for an owned
        # generation: the reactor closes its owner's pipe itself as it shuts down).
        if s.parentWaiters:
            parentExiting(c, s)

    @pep614(Starting.upon(_Generation.whenParentExited).loop())
    @pep614(WaitingForParent.upon(_Generation.whenParentExited).loop())
    def waitForParent(c: _Generation, s: _Core, result: Deferred[None]) -> None:
        s.parentWaiters.append(result)

    @pep614(StartingAlone.upon(_Generation.whenParentExited).loop())
    @pep614(Ready.upon(_Generation.whenParentExited).loop())
    @pep614(Upgrading.upon(_Generation.whenParentExited, nodata=True).loop())
    @pep614(Replaced.upon(_Generation.whenParentExited, nodata=True).loop())
    def parentIsGone(c: _Generation, s: _Core, result: Deferred[None]) -> None:
        s.settle([result], None)

    # --- upgrades ----------------------------------------------------------------

    @pep614(Starting.upon(_Generation.upgrade).loop())
    @pep614(Starting.upon(_Generation.join).loop())
    @pep614(StartingAlone.upon(_Generation.upgrade).loop())
    @pep614(StartingAlone.upon(_Generation.join).loop())
    def notReady(
        c: _Generation, s: _Core, result: Deferred[int], onStart: OnStart | None
    ) -> None:
        if s.parentGone():
            c.parentExited()
        s.fail(result, NotReady())

    @pep614(WaitingForParent.upon(_Generation.upgrade).loop())
    @pep614(WaitingForParent.upon(_Generation.join).loop())
    def parentAlive(
        c: _Generation, s: _Core, result: Deferred[int], onStart: OnStart | None
    ) -> None:
        if s.parentGone():
            # Gone, but not yet seen by the reactor: notice now, so that an
            # upgrade asked for right after the old pid vanished is not refused.
            c.parentExited()
            c.upgrade(result, onStart)
        else:
            s.fail(result, ParentAlive())

    @pep614(Ready.upon(_Generation.upgrade).loop())
    @pep614(Ready.upon(_Generation.join).loop())
    def startUpgrade(
        c: _Generation, s: _Core, result: Deferred[int], onStart: OnStart | None
    ) -> None:
        if os.getpid() == 1:
            s.fail(result, RunningAsInit())
            return
        nextGeneration = s.generation + 1
        if onStart is not None:
            s.later(lambda: onStart(nextGeneration))
        try:
            attempt, channels = s.spawnNext()
        except ChildFailed as e:
            s.fail(result, e)
            return
        c._spawned(attempt, result, channels)
        attempt.result.addCallbacks(
            lambda pid: s.feed(c._childReady, Successor(pid, channels)),
            lambda reason: s.feed(c._childFailed, reason),
        )

    Ready.upon(_Generation._spawned).to(Upgrading).returns(None)

    @pep614(Upgrading.upon(_Generation.upgrade).loop())
    def inProgress(
        c: _Generation,
        s: _Core,
        upgrade: _Upgrade,
        result: Deferred[int],
        onStart: OnStart | None,
    ) -> None:
        s.fail(result, UpgradeInProgress())

    @pep614(Upgrading.upon(_Generation.join).loop())
    def joinUpgrade(
        c: _Generation,
        s: _Core,
        upgrade: _Upgrade,
        result: Deferred[int],
        onStart: OnStart | None,
    ) -> None:
        s.log.info("txflip: upgrade requested: joins the upgrade in progress")
        upgrade.waiters.append(result)

    @pep614(Killing.upon(_Generation.upgrade, nodata=True).loop())
    @pep614(Killing.upon(_Generation.join, nodata=True).loop())
    @pep614(Replaced.upon(_Generation.upgrade, nodata=True).loop())
    @pep614(Replaced.upon(_Generation.join, nodata=True).loop())
    @pep614(Stopped.upon(_Generation.upgrade).loop())
    @pep614(Stopped.upon(_Generation.join).loop())
    @pep614(Abandoned.upon(_Generation.upgrade).loop())
    @pep614(Abandoned.upon(_Generation.join).loop())
    def stopping(
        c: _Generation, s: _Core, result: Deferred[int], onStart: OnStart | None
    ) -> None:
        s.fail(result, Stopping())

    @pep614(Upgrading.upon(_Generation._childReady).to(Replaced))
    def replaced(
        c: _Generation, s: _Core, upgrade: _Upgrade, successor: Successor
    ) -> None:
        s.log.info(
            "txflip: upgrade: pid {pid} is ready; this process will exit",
            pid=successor.pid,
        )
        s.settle(upgrade.waiters, successor.pid)
        s.settle(s.exitWaiters, Ending(successor))

    @pep614(Upgrading.upon(_Generation._childFailed).to(Ready))
    def upgradeFailed(
        c: _Generation, s: _Core, upgrade: _Upgrade, reason: Failure
    ) -> None:
        closeAll(upgrade.channels)
        s.stillServing(reason)
        s.settle(upgrade.waiters, reason)

    # The killed child's own outcome: Killing waits for _childGone instead.
    Killing.upon(_Generation._childReady, nodata=True).loop().returns(None)
    Killing.upon(_Generation._childFailed, nodata=True).loop().returns(None)

    # --- the end -------------------------------------------------------------------

    @pep614(Starting.upon(_Generation.stop).to(Abandoned))
    @pep614(StartingAlone.upon(_Generation.stop).to(Abandoned))
    @pep614(WaitingForParent.upon(_Generation.stop).to(Stopped))
    @pep614(Ready.upon(_Generation.stop).to(Stopped))
    def stopNow(c: _Generation, s: _Core, result: Deferred[None]) -> None:
        s.settle(s.exitWaiters, STOPPED)
        s.settle([result], None)

    @pep614(Upgrading.upon(_Generation.stop).loop())
    def stopDuringUpgrade(
        c: _Generation, s: _Core, upgrade: _Upgrade, result: Deferred[None]
    ) -> None:
        c._kill(upgrade, result)

    @pep614(Upgrading.upon(_Generation._kill).to(Killing))
    def kill(
        c: _Generation,
        s: _Core,
        old: _Upgrade,
        upgrade: _Upgrade,
        result: Deferred[None],
    ) -> None:
        s.log.info(
            "txflip: stopping: killing starting child pid {pid}",
            pid=upgrade.attempt.pid,
        )
        upgrade.attempt.cancel().addBoth(lambda _: s.feed(c._childGone))

    @pep614(Killing.upon(_Generation._childGone).to(Stopped))
    def childGone(c: _Generation, s: _Core, killing: _Killing) -> None:
        closeAll(killing.upgrade.channels)
        s.settle(killing.upgrade.waiters, Failure(Stopping()))
        s.settle(s.exitWaiters, STOPPED)
        s.settle([killing.stopped], None)

    @pep614(Killing.upon(_Generation.stop, nodata=True).loop())
    @pep614(Replaced.upon(_Generation.stop, nodata=True).loop())
    @pep614(Stopped.upon(_Generation.stop).loop())
    @pep614(Abandoned.upon(_Generation.stop).loop())
    def alreadyStopping(c: _Generation, s: _Core, result: Deferred[None]) -> None:
        s.settle([result], None)

    @pep614(Killing.upon(_Generation.whenParentExited, nodata=True).loop())
    @pep614(Stopped.upon(_Generation.whenParentExited).loop())
    @pep614(Abandoned.upon(_Generation.whenParentExited).loop())
    def notWatching(c: _Generation, s: _Core, result: Deferred[None]) -> None:
        s.fail(result, Stopping())

    # --- exit ----------------------------------------------------------------------

    @pep614(Starting.upon(_Generation.whenExit).loop())
    @pep614(StartingAlone.upon(_Generation.whenExit).loop())
    @pep614(WaitingForParent.upon(_Generation.whenExit).loop())
    @pep614(Ready.upon(_Generation.whenExit).loop())
    @pep614(Upgrading.upon(_Generation.whenExit, nodata=True).loop())
    @pep614(Killing.upon(_Generation.whenExit, nodata=True).loop())
    @pep614(OwnedStarting.upon(_Generation.whenExit, nodata=True).loop())
    @pep614(Owned.upon(_Generation.whenExit, nodata=True).loop())
    def waitForExit(c: _Generation, s: _Core, result: Deferred[Ending]) -> None:
        s.exitWaiters.append(result)

    @pep614(Replaced.upon(_Generation.whenExit).loop())
    def exitReplaced(
        c: _Generation, s: _Core, successor: Successor, result: Deferred[Ending]
    ) -> None:
        s.settle([result], Ending(successor))

    @pep614(Stopped.upon(_Generation.whenExit).loop())
    @pep614(Abandoned.upon(_Generation.whenExit).loop())
    def exitNow(c: _Generation, s: _Core, result: Deferred[Ending]) -> None:
        s.settle([result], STOPPED)

    # --- a generation its parent owns (a supervisor's worker) ---------------

    Starting.upon(_Generation.owned).to(OwnedStarting).returns(None)

    @pep614(OwnedStarting.upon(_Generation._served).loop())
    def servedOwned(c: _Generation, s: _Core, owner: Owner) -> None:
        # Not closeUnclaimed: the owner passes every socket it owns, and its
        # pipe's end is no parent's exit but the owner's death.
        served(c, s)
        c._owned(owner)

    OwnedStarting.upon(_Generation._owned).to(Owned).returns(None)

    @pep614(OwnedStarting.upon(_Generation.upgrade).loop())
    @pep614(OwnedStarting.upon(_Generation.join).loop())
    @pep614(Owned.upon(_Generation.upgrade).loop())
    @pep614(Owned.upon(_Generation.join).loop())
    def upgradeTheOwner(
        c: _Generation,
        s: _Core,
        owner: Owner,
        result: Deferred[int],
        onStart: OnStart | None,
    ) -> None:
        s.fail(result, owner.upgradeRefused())

    @pep614(OwnedStarting.upon(_Generation.parentPipeClosed).to(Abandoned))
    @pep614(Owned.upon(_Generation.parentPipeClosed).to(Stopped))
    def ownerGone(c: _Generation, s: _Core, owner: Owner) -> None:
        # Nobody would replace us, and a restarted owner starts generations of
        # its own: stop gracefully (draining), as a stop would.
        owner.lost(s.log)
        s.settle(s.exitWaiters, STOPPED)

    # (automat hands a data state's data to the output of a transition to a
    # state without data even with nodata=True: these outputs take it.)
    @pep614(OwnedStarting.upon(_Generation.stop).to(Abandoned))
    @pep614(Owned.upon(_Generation.stop).to(Stopped))
    def stopOwned(
        c: _Generation, s: _Core, owner: Owner, result: Deferred[None]
    ) -> None:
        stopNow(c, s, result)

    @pep614(OwnedStarting.upon(_Generation.whenParentExited, nodata=True).loop())
    @pep614(Owned.upon(_Generation.whenParentExited, nodata=True).loop())
    def neverReplacing(c: _Generation, s: _Core, result: Deferred[None]) -> None:
        # An owned generation's parent is its owner, whose end is our stop, not a
        # previous generation's exit: nothing is waited for, and the Deferred
        # never fires (it did not before the machine knew workers, either).
        pass

    # --- queries -------------------------------------------------------------------

    # Ready once served, and ever after: a generation that stopped served.
    for state in (*starting, Abandoned):
        state.upon(_Generation.isReady).loop().returns(False)
    OwnedStarting.upon(_Generation.isReady, nodata=True).loop().returns(False)
    for state in (*serving, Stopped):
        state.upon(_Generation.isReady).loop().returns(True)
    for dataState in (Upgrading, Killing, Replaced, Owned):
        dataState.upon(_Generation.isReady, nodata=True).loop().returns(True)

    for state in (*starting, *serving, Stopped, Abandoned):
        state.upon(_Generation.successor).loop().returns(None)
    for dataState in (Upgrading, Killing, *owned):
        dataState.upon(_Generation.successor, nodata=True).loop().returns(None)

    @pep614(Replaced.upon(_Generation.successor).loop())
    def replacedBy(c: _Generation, s: _Core, successor: Successor) -> int | None:
        return successor.pid

    built = machine.build()

    def start(core: _Core) -> _Generation:
        generation = built(core)
        core.feed(core.parent.begin, generation)
        return generation

    return start


makeGeneration = _makeMachine()


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
        reactor: IReactorCore | None = None,
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

        @param reactor: the reactor (default: Twisted's global one).  Typed by
            Twisted's core interface, which its global reactor is typed as
            providing; txflip also uses the socket, process and file descriptor
            interfaces, which every POSIX reactor provides.
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
        parent = parentOf(handoff)
        self.listeners = parent.listeners(inherited)
        pidFile = parent.pidFile(pidFile)
        parentPID = parent.pid
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
            parent,
            self._log,
        )
        self._machine = makeGeneration(self._core)
        if handoff is not None:
            ParentWatcher(self.reactor, handoff.parentFD, self._parentPipeClosed)

    def _parentPipeClosed(self) -> None:
        self._core.feed(self._machine.parentPipeClosed)

    @property
    def parent(self) -> Parent:
        """
        Who started this generation: a parent generation (or none), or a
        supervisor whose worker we are (C{txflip run}; it owns the sockets, the
        pid file and the upgrades).
        """
        return self._core.parent

    @property
    def hasParent(self) -> bool:
        """
        Whether a previous generation started this one.
        """
        return self._core.handoff is not None

    def wrapSpawner(self, wrap: Callable[[Spawner], Spawner]) -> None:
        """
        Start later generations through C{wrap(current spawner)}: for what changes
        how each next generation is started (the JSON logs' upgrade id in its
        environment).  What a successor is handed goes through L{openChannel}.
        """
        self._core.spawner = wrap(self._core.spawner)

    def openChannel(self, name: str, opened: ChannelOpened | None = None) -> None:
        """
        Open a channel (a Unix stream socketpair) to each next generation: it
        inherits one end under C{name} (L{claimInheritedFD}), and our end comes
        with the L{Successor} in L{whenExit}'s L{Ending}.  How moving connections
        reaches the new generation, without the core knowing what moves.

        @param opened: called with our end as each next generation starts, and
            the start's outcome, for a channel that carries something from the
            start (the metrics).
        """
        if name in self._core.channelNames or name in self._core.extraFDs:
            raise ValueError(f"a channel named {name!r} is open already")
        self._core.channelNames.append(name)
        if opened is not None:
            self._core.channelOpened[name] = opened

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
        return self._core.parent.pid

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

    def whenExit(self) -> Deferred[Ending]:
        """
        Fires when this process should exit, with how it ended: after a successful
        upgrade (an L{Ending} naming the L{Successor}), or after L{stop} (a final
        L{Ending}).
        """
        result: Deferred[Ending] = Deferred()
        self._core.feed(self._machine.whenExit, result)
        return result

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
