"""
The rules of the supervisor's life (C{txflip run}), as a typed automat machine:
which input moves which state where, and what it does on the way.

States: Idle, Starting, Serving, Upgrading, Probation, Stopping, Stopped.  A worker
that fails while the service starts makes C{txflip run} exit with the reason; one
that dies while serving is replaced, with a backoff; a new worker that fails during
an upgrade fails it (the old workers serve on), and one that dies during the
probation rolls the upgrade back.  Inputs and data are in
L{txflip.run._core}; the public API in front is
L{txflip.run._supervisor.Supervisor}.
"""

from __future__ import annotations

from typing import Any

from automat import TypeMachineBuilder, pep614
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from txflip import _errors
from txflip._errors import NotReady, UpgradeError, UpgradeInProgress
from txflip.run._balance import MAX_WORKERS
from txflip.run._core import STABLE, _Core, _Supervisor
from txflip.run._workers import Worker


def _makeMachine() -> Any:
    machine = TypeMachineBuilder(_Supervisor, _Core)
    Idle = machine.state("Idle")
    Starting = machine.state("Starting")
    Serving = machine.state("Serving")
    Upgrading = machine.state("Upgrading")
    Probation = machine.state("Probation")
    Stopping = machine.state("Stopping")
    Stopped = machine.state("Stopped")
    busy = (Upgrading, Probation)
    everyState = (Idle, Starting, Serving, *busy, Stopping, Stopped)

    @pep614(Idle.upon(_Supervisor.start).to(Starting))
    def start(c: _Supervisor, s: _Core) -> None:
        s.phase = "starting"
        for _ in range(s.target):
            s.spawn(s.generation)

    for state in (Starting, Serving, *busy, Stopping, Stopped):
        state.upon(_Supervisor.start).loop().returns(None)

    @pep614(Starting.upon(_Supervisor._workerReady).loop())
    def firstReady(c: _Supervisor, s: _Core, worker: Worker) -> bool:
        return all(w.state == "ready" for w in s.active())

    @pep614(Serving.upon(_Supervisor._workerReady).loop())
    @pep614(Upgrading.upon(_Supervisor._workerReady).loop())
    @pep614(Probation.upon(_Supervisor._workerReady).loop())
    @pep614(Stopping.upon(_Supervisor._workerReady).loop())
    def replacementReady(c: _Supervisor, s: _Core, worker: Worker) -> bool:
        s.log.info("txflip run: worker pid {pid} is ready", pid=worker.pid)
        if len(s.active()) >= s.target:
            s.note = None
        return False

    @pep614(Starting.upon(_Supervisor._started).to(Serving))
    def started(c: _Supervisor, s: _Core) -> None:
        s.phase = "serving"
        pids = " ".join(str(w.pid) for w in s.active())
        s.log.info("txflip run: serving (workers {pids})", pids=pids)
        s.notifier.ready(f"serving: {len(s.active())} workers (pids {pids})")
        s.later(s.startup, None)
        s.topUp()

    # -- failures ----------------------------------------------------------------

    @pep614(Starting.upon(_Supervisor._crashed).to(Stopping))
    def cannotStart(c: _Supervisor, s: _Core, worker: Worker, reason: str) -> None:
        s.failure = reason
        s.log.critical("txflip run: cannot start: {reason}", reason=reason)
        beginStop(s)

    @pep614(Serving.upon(_Supervisor._crashed).loop())
    def crashed(c: _Supervisor, s: _Core, worker: Worker, reason: str) -> None:
        if worker.readyAt is not None and worker.uptime >= STABLE:
            s.failures = 0
        else:
            s.failures += 1
        s.note = f"worker pid {worker.pid} {reason}"
        s.log.error("txflip run: {note}; replacing it", note=s.note)
        s.topUp()

    @pep614(Upgrading.upon(_Supervisor._crashed).loop())
    @pep614(Probation.upon(_Supervisor._crashed).loop())
    @pep614(Stopping.upon(_Supervisor._crashed).loop())
    def crashedMeanwhile(c: _Supervisor, s: _Core, worker: Worker, reason: str) -> None:
        # Replaced (if still needed) once the upgrade is over.
        s.log.error(
            "txflip run: worker pid {pid} {reason}", pid=worker.pid, reason=reason
        )

    @pep614(Serving.upon(_Supervisor._restart).loop())
    def restart(c: _Supervisor, s: _Core) -> None:
        s.restartCall = None
        for _ in range(s.target - len(s.active())):
            s.spawn(s.generation)

    for state in (Idle, Starting, *busy, Stopping, Stopped):
        state.upon(_Supervisor._restart).loop().returns(None)

    # -- upgrades ----------------------------------------------------------------

    @pep614(Idle.upon(_Supervisor.upgrade).loop())
    @pep614(Starting.upon(_Supervisor.upgrade).loop())
    def notReady(c: _Supervisor, s: _Core) -> Deferred[list[int]]:
        return fail(NotReady())

    @pep614(Upgrading.upon(_Supervisor.upgrade).loop())
    @pep614(Probation.upon(_Supervisor.upgrade).loop())
    def inProgress(c: _Supervisor, s: _Core) -> Deferred[list[int]]:
        return fail(UpgradeInProgress())

    @pep614(Stopping.upon(_Supervisor.upgrade).loop())
    @pep614(Stopped.upon(_Supervisor.upgrade).loop())
    def terminating(c: _Supervisor, s: _Core) -> Deferred[list[int]]:
        return fail(_errors.Stopping())

    @pep614(Serving.upon(_Supervisor.upgrade).to(Upgrading))
    def startUpgrade(c: _Supervisor, s: _Core) -> Deferred[list[int]]:
        s.phase = "upgrading"
        if s.restartCall is not None and s.restartCall.active():
            s.restartCall.cancel()
        s.restartCall = None
        s.pending = Deferred()
        s.old = s.active()
        s.count = s.target
        s.notifier.reloading(f"upgrading: starting generation {s.generation + 1}")
        s.log.info(
            "txflip run: upgrading {n} workers to generation {g}",
            n=s.count,
            g=s.generation + 1,
        )
        nextNew(s)
        return s.pending

    def nextNew(s: _Core) -> None:
        worker = s.spawn(s.generation + 1)
        if worker is not None:
            s.new.append(worker)

    @pep614(Upgrading.upon(_Supervisor._newReady).loop())
    def newReady(c: _Supervisor, s: _Core, worker: Worker) -> bool:
        s.log.info(
            "txflip run: new worker pid {pid} is ready ({i}/{n})",
            pid=worker.pid,
            i=len(s.new),
            n=s.count,
        )
        if not s.probation:
            # Chain: one old worker drains for each new one that serves.
            serving = [w for w in s.old if not w.retiring and w.state != "gone"]
            if serving:
                s.retire(serving[0])
        if len(s.new) < s.count:
            nextNew(s)
            return False
        return True

    for state in (Idle, Starting, Serving, Probation, Stopping, Stopped):
        state.upon(_Supervisor._newReady).loop().returns(False)

    @pep614(Upgrading.upon(_Supervisor._beginProbation).to(Probation))
    def beginProbation(c: _Supervisor, s: _Core) -> None:
        s.phase = "probation"
        s.log.info(
            "txflip run: every new worker serves; probation for {p:g} s",
            p=s.probation,
        )
        s.timer = s.reactor.callLater(s.probation, s.events.probationOver)

    @pep614(Upgrading.upon(_Supervisor._upgradeDone).to(Serving))
    @pep614(Probation.upon(_Supervisor._upgradeDone).to(Serving))
    def upgradeDone(c: _Supervisor, s: _Core) -> None:
        s.phase = "serving"
        s.generation += 1
        pids = [w.pid for w in s.new]
        for worker in s.old:
            s.retire(worker)
        s.log.info(
            "txflip run: upgrade done: generation {g} serves (pids {pids})",
            g=s.generation,
            pids=" ".join(map(str, pids)),
        )
        s.notifier.stillReady(f"serving: generation {s.generation} (pids {pids})")
        s.finishUpgrade(f"succeeded: pids {' '.join(map(str, pids))} serve", pids)
        s.failures = 0
        s.topUp()

    for state in (Idle, Starting, Serving, Stopping, Stopped):
        state.upon(_Supervisor._upgradeDone).loop().returns(None)

    @pep614(Upgrading.upon(_Supervisor._newFailed).to(Serving))
    @pep614(Probation.upon(_Supervisor._newFailed).to(Serving))
    def upgradeFailed(c: _Supervisor, s: _Core, reason: str) -> None:
        s.phase = "serving"
        # A new worker that replaced a drained old one keeps serving (no
        # probation: chain); any other is stopped, and the old ones serve on.
        ready = [w for w in s.new if w.state == "ready" and not w.retiring]
        replaced = sum(1 for w in s.old if w.retiring)
        for worker in ready[replaced:]:
            s.retire(worker)
        s.log.error("txflip run: upgrade failed: {reason}", reason=reason)
        s.notifier.stillReady(f"upgrade failed: {reason}; serving")
        s.finishUpgrade(f"failed: {reason}", Failure(UpgradeError(reason)))
        s.topUp()

    for state in (Idle, Starting, Serving, Stopping, Stopped):
        state.upon(_Supervisor._newFailed).loop().returns(None)

    # -- size --------------------------------------------------------------------

    @pep614(Serving.upon(_Supervisor.resize).loop())
    def resizeNow(c: _Supervisor, s: _Core, delta: int) -> None:
        resizeLater(c, s, delta)
        s.topUp()

    @pep614(Idle.upon(_Supervisor.resize).loop())
    @pep614(Starting.upon(_Supervisor.resize).loop())
    @pep614(Upgrading.upon(_Supervisor.resize).loop())
    @pep614(Probation.upon(_Supervisor.resize).loop())
    @pep614(Stopping.upon(_Supervisor.resize).loop())
    @pep614(Stopped.upon(_Supervisor.resize).loop())
    def resizeLater(c: _Supervisor, s: _Core, delta: int) -> None:
        wanted = s.target + delta
        if not 1 <= wanted <= MAX_WORKERS:
            s.log.warn(
                "txflip run: staying at {n} workers (1 to {most})",
                n=s.target,
                most=MAX_WORKERS,
            )
            return
        s.target = wanted
        s.log.info("txflip run: {n} workers wanted", n=s.target)

    # -- stopping ----------------------------------------------------------------

    def beginStop(s: _Core) -> None:
        s.phase = "stopping"
        s.cancelTimers()
        s.notifier.stopping(f"stopping: draining {len(s.active())} workers")
        for worker in s.workers:
            s.retire(worker)
        if s.pending is not None:
            s.finishUpgrade("refused: terminating", Failure(_errors.Stopping()))
        if not s.startup.called:
            s.later(s.startup, Failure(UpgradeError(s.failure or "terminating")))

    @pep614(Idle.upon(_Supervisor.stop).to(Stopping))
    @pep614(Starting.upon(_Supervisor.stop).to(Stopping))
    @pep614(Serving.upon(_Supervisor.stop).to(Stopping))
    @pep614(Upgrading.upon(_Supervisor.stop).to(Stopping))
    @pep614(Probation.upon(_Supervisor.stop).to(Stopping))
    def stop(c: _Supervisor, s: _Core) -> Deferred[None]:
        s.log.info("txflip run: stopping {n} workers", n=len(s.active()))
        beginStop(s)
        done: Deferred[None] = Deferred()
        s.stopped.addBoth(lambda _: done.callback(None))
        return done

    @pep614(Stopping.upon(_Supervisor.stop).loop())
    @pep614(Stopped.upon(_Supervisor.stop).loop())
    def alreadyStopping(c: _Supervisor, s: _Core) -> Deferred[None]:
        if s.stopped.called:
            return succeed(None)
        done: Deferred[None] = Deferred()
        s.stopped.addBoth(lambda _: done.callback(None))
        return done

    @pep614(Stopping.upon(_Supervisor._allGone).to(Stopped))
    def allGone(c: _Supervisor, s: _Core) -> None:
        s.phase = "stopped"
        s.later(s.stopped, None)

    for state in everyState:
        if state is not Stopping:
            state.upon(_Supervisor._allGone).loop().returns(None)
    for state in (Idle, Serving, *busy, Stopped):
        state.upon(_Supervisor._started).loop().returns(None)
    for state in (Idle, Stopped):
        state.upon(_Supervisor._workerReady).loop().returns(False)
        state.upon(_Supervisor._crashed).loop().returns(None)
    for state in (Idle, Starting, Serving, Probation, Stopping, Stopped):
        state.upon(_Supervisor._beginProbation).loop().returns(None)
    return machine.build()


_Machine = _makeMachine()
