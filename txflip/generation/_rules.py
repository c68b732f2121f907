"""
The rules of one generation's life: which input moves which state where, and what
it does on the way (the diagram is in L{txflip.generation._upgrader}).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from automat import TypeMachineBuilder, pep614
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txflip._errors import (
    ChildFailed,
    NotReady,
    ParentAlive,
    RunningAsInit,
    Stopping,
    UpgradeInProgress,
    WorkerOfSupervisor,
)
from txflip.generation._states import OnStart, _Core, _Generation, _Killing, _Upgrade
from txflip.run._channel import SupervisorLink


def _makeMachine() -> Callable[[_Core], _Generation]:
    machine = TypeMachineBuilder(_Generation, _Core)
    Starting = machine.state("Starting")
    StartingAlone = machine.state("StartingAlone")
    WaitingForParent = machine.state("WaitingForParent")
    Ready = machine.state("Ready")
    Upgrading = machine.state(
        "Upgrading", lambda c, s, attempt, result: _Upgrade(attempt, [result])
    )
    Killing = machine.state(
        "Killing", lambda c, s, upgrade, result: _Killing(upgrade, result)
    )
    Replaced = machine.state("Replaced", lambda c, s, pid: pid)
    Stopped = machine.state("Stopped")
    Abandoned = machine.state("Abandoned")
    # A worker of a supervisor (txflip run): a generation whose parent is the
    # supervisor, which alone upgrades; its pipe's end means the supervisor died.
    WorkerStarting = machine.state("WorkerStarting", lambda c, s, link: link)
    Working = machine.state("Working", lambda c, s, link: link)
    starting = (Starting, StartingAlone)
    serving = (WaitingForParent, Ready)
    worker = (WorkerStarting, Working)

    # --- readiness -------------------------------------------------------------

    @pep614(Starting.upon(_Generation.ready).loop())
    @pep614(StartingAlone.upon(_Generation.ready).loop())
    @pep614(WorkerStarting.upon(_Generation.ready, nodata=True).loop())
    def writePidFile(c: _Generation, s: _Core) -> None:
        # The step that can fail comes before the state changes.
        if s.pidFile is not None:
            s.pidFile.write(os.getpid())
        c._served()

    for state in (*serving, Stopped, Abandoned):
        state.upon(_Generation.ready).loop().returns(None)
    for dataState in (Upgrading, Killing, Replaced, Working):
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
        # Only news to whoever still waits for the parent (none for a worker:
        # the reactor closes the supervisor's pipe itself as it shuts down).
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
            attempt = s.spawnNext()
        except ChildFailed as e:
            s.fail(result, e)
            return
        c._spawned(attempt, result)
        attempt.result.addCallbacks(
            lambda pid: s.feed(c._childReady, pid),
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
    def replaced(c: _Generation, s: _Core, upgrade: _Upgrade, pid: int) -> None:
        s.log.info(
            "txflip: upgrade: pid {pid} is ready; this process will exit", pid=pid
        )
        s.settle(upgrade.waiters, pid)
        s.settle(s.exitWaiters, None)

    @pep614(Upgrading.upon(_Generation._childFailed).to(Ready))
    def upgradeFailed(
        c: _Generation, s: _Core, upgrade: _Upgrade, reason: Failure
    ) -> None:
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
        s.settle(s.exitWaiters, None)
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
        s.settle(killing.upgrade.waiters, Failure(Stopping()))
        s.settle(s.exitWaiters, None)
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
    @pep614(WorkerStarting.upon(_Generation.whenExit, nodata=True).loop())
    @pep614(Working.upon(_Generation.whenExit, nodata=True).loop())
    def waitForExit(c: _Generation, s: _Core, result: Deferred[None]) -> None:
        s.exitWaiters.append(result)

    @pep614(Replaced.upon(_Generation.whenExit, nodata=True).loop())
    @pep614(Stopped.upon(_Generation.whenExit).loop())
    @pep614(Abandoned.upon(_Generation.whenExit).loop())
    def exitNow(c: _Generation, s: _Core, result: Deferred[None]) -> None:
        s.settle([result], None)

    # --- a supervisor's worker -------------------------------------------------

    Starting.upon(_Generation._enlist).to(WorkerStarting).returns(None)

    @pep614(WorkerStarting.upon(_Generation._served).loop())
    def servedAsWorker(c: _Generation, s: _Core, link: SupervisorLink) -> None:
        # Not closeUnclaimed: the supervisor passes every socket it owns, and
        # its pipe's end is no parent's exit but the supervisor's death.
        served(c, s)
        c._working(link)

    WorkerStarting.upon(_Generation._working).to(Working).returns(None)

    @pep614(WorkerStarting.upon(_Generation.upgrade).loop())
    @pep614(WorkerStarting.upon(_Generation.join).loop())
    @pep614(Working.upon(_Generation.upgrade).loop())
    @pep614(Working.upon(_Generation.join).loop())
    def upgradeTheSupervisor(
        c: _Generation,
        s: _Core,
        link: SupervisorLink,
        result: Deferred[int],
        onStart: OnStart | None,
    ) -> None:
        s.fail(result, WorkerOfSupervisor(link.supervisorPID))

    @pep614(WorkerStarting.upon(_Generation.parentPipeClosed).to(Abandoned))
    @pep614(Working.upon(_Generation.parentPipeClosed).to(Stopped))
    def supervisorGone(c: _Generation, s: _Core, link: SupervisorLink) -> None:
        # Nobody would replace us, and a restarted service starts workers of
        # its own: stop gracefully (draining), as a stop would.
        s.log.warn(
            "txflip: the supervisor (pid {pid}) is gone: stopping",
            pid=link.supervisorPID,
        )
        s.settle(s.exitWaiters, None)

    # (automat hands a data state's data to the output of a transition to a
    # state without data even with nodata=True: these outputs take it.)
    @pep614(WorkerStarting.upon(_Generation.stop).to(Abandoned))
    @pep614(Working.upon(_Generation.stop).to(Stopped))
    def stopWorker(
        c: _Generation, s: _Core, link: SupervisorLink, result: Deferred[None]
    ) -> None:
        stopNow(c, s, result)

    @pep614(WorkerStarting.upon(_Generation.whenParentExited, nodata=True).loop())
    @pep614(Working.upon(_Generation.whenParentExited, nodata=True).loop())
    def neverReplacing(c: _Generation, s: _Core, result: Deferred[None]) -> None:
        # A worker's parent is the supervisor, whose end is our stop, not a
        # previous generation's exit: nothing is waited for, and the Deferred
        # never fires (it did not before the machine knew workers, either).
        pass

    # --- queries -------------------------------------------------------------------

    # Ready once served, and ever after: a generation that stopped served.
    for state in (*starting, Abandoned):
        state.upon(_Generation.isReady).loop().returns(False)
    WorkerStarting.upon(_Generation.isReady, nodata=True).loop().returns(False)
    for state in (*serving, Stopped):
        state.upon(_Generation.isReady).loop().returns(True)
    for dataState in (Upgrading, Killing, Replaced, Working):
        dataState.upon(_Generation.isReady, nodata=True).loop().returns(True)

    for state in (*starting, *serving, Stopped, Abandoned):
        state.upon(_Generation.successor).loop().returns(None)
    for dataState in (Upgrading, Killing, *worker):
        dataState.upon(_Generation.successor, nodata=True).loop().returns(None)

    @pep614(Replaced.upon(_Generation.successor).loop())
    def replacedBy(c: _Generation, s: _Core, pid: int) -> int | None:
        return pid

    built = machine.build()

    def start(core: _Core) -> _Generation:
        generation = built(core)
        if core.supervisor is not None:
            core.feed(generation._enlist, core.supervisor)
        elif core.parentPID is None:
            core.feed(generation.parentExited)
        return generation

    return start


makeGeneration = _makeMachine()
