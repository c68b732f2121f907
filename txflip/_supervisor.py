"""
The supervisor's life (C{txflip run}), as a state machine: starting its workers,
serving, upgrading them one by one, on probation, stopping, stopped.

The machine decides what each worker event means in each state: a worker that
fails while the service starts makes C{txflip run} exit with the reason; one that
dies while serving is replaced, with a backoff; a new worker that fails during an
upgrade fails it (the old workers serve on), and one that dies during the
probation rolls the upgrade back.  The L{Supervisor} class in front is the small
public API; the processes themselves are L{txflip._workers.Worker}s.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from automat import TypeMachineBuilder, pep614
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import _errors
from ._errors import NotReady, UpgradeError, UpgradeInProgress
from ._spawn import Command
from ._workers import Sockets, Worker
from .systemd import Notifier

#: A worker that served this long before it died is no crash loop.
STABLE = 10.0
MAX_BACKOFF = 30.0


def backoff(failures: int) -> float:
    """
    Seconds before the next replacement after C{failures} quick failures in a row:
    0, then 0.5, 1, 2, ... up to L{MAX_BACKOFF}.
    """
    return 0.0 if failures <= 0 else min(MAX_BACKOFF, 0.5 * 2 ** (failures - 1))


class _Supervisor(Protocol):
    def start(self) -> None:
        "Start the workers."

    def upgrade(self) -> Deferred[list[int]]:
        "Replace every worker by a new one; fire with the new pids."

    def stop(self) -> Deferred[None]:
        "Stop every worker gracefully."

    def resize(self, delta: int) -> None:
        "One worker more (+1) or fewer (-1)."

    def _workerReady(self, worker: Worker) -> bool:
        "A first or replacement worker serves; whether all of them do."

    def _started(self) -> None:
        "Every first worker serves."

    def _crashed(self, worker: Worker, reason: str) -> None:
        "A worker nobody asked to stop is gone."

    def _newReady(self, worker: Worker) -> bool:
        "A new worker of the upgrade serves; whether it was the last."

    def _newFailed(self, reason: str) -> None:
        "A new worker of the upgrade failed, before or after ready."

    def _beginProbation(self) -> None:
        "Every new worker serves; watch them for the probation."

    def _upgradeDone(self) -> None:
        "The upgrade succeeded: retire the old workers."

    def _restart(self) -> None:
        "The backoff is over: replace the missing workers."

    def _allGone(self) -> None:
        "Every worker is gone."


@dataclass
class _Core:
    reactor: Any
    command: Command
    environ: Mapping[str, str]
    sockets: Sockets
    notifier: Notifier
    log: Logger
    target: int
    upgradeTimeout: float
    probation: float
    drainTimeout: float
    events: Any = None
    phase: str = "idle"
    generation: int = 1
    workers: list[Worker] = field(default_factory=list)
    startup: Deferred[None] = field(default_factory=Deferred)
    stopped: Deferred[None] = field(default_factory=Deferred)
    #: Why the service could not start, if it could not.
    failure: str | None = None
    # The upgrade in progress:
    pending: Deferred[list[int]] | None = None
    new: list[Worker] = field(default_factory=list)
    old: list[Worker] = field(default_factory=list)
    count: int = 0
    timer: IDelayedCall | None = None
    lastUpgrade: tuple[float, str] | None = None
    # Replacing workers that died:
    failures: int = 0
    restartCall: IDelayedCall | None = None
    note: str | None = None

    def later(self, d: Deferred[Any], result: object) -> None:
        """
        Fire C{d} from the reactor, outside the machine's transition: its
        callbacks may give the machine its next input.
        """
        method = d.errback if isinstance(result, Failure) else d.callback
        self.reactor.callLater(0, method, result)

    def active(self) -> list[Worker]:
        return [w for w in self.workers if not w.retiring and w.state != "gone"]

    def spawn(self, generation: int) -> Worker | None:
        try:
            worker = Worker(
                self.reactor,
                self.command,
                self.environ,
                generation,
                self.sockets,
                self.events,
                self.upgradeTimeout,
                self.successorFor,
            )
        except Exception as e:  # noqa: BLE001 - reported as the worker's failure
            self.log.error("txflip run: cannot start a worker: {e}", e=e)
            self.reactor.callLater(0, self.events.spawnFailed, f"cannot start: {e}")
            return None
        self.workers.append(worker)
        self.log.info(
            "txflip run: started worker pid {pid} (generation {generation})",
            pid=worker.pid,
            generation=generation,
        )
        return worker

    def successorFor(self, asking: Worker) -> socket.socket | None:
        """
        A retiring worker asks where to move its connections: the moves channel
        of a newer worker that serves and has none yet (one old worker for each
        new one).  Under probation, old workers retire only once it is over, so
        connections move only to workers that passed it.
        """
        for worker in self.workers:
            if worker.generation > asking.generation:
                end = worker.takeMovesEnd()
                if end is not None:
                    return end
        return None

    def retire(self, worker: Worker) -> None:
        worker.retire(self.drainTimeout)

    def cancelTimers(self) -> None:
        for call in (self.timer, self.restartCall):
            if call is not None and call.active():
                call.cancel()
        self.timer = self.restartCall = None

    def topUp(self) -> None:
        """
        Serving: start workers until there are L{target}, after the backoff if
        workers keep failing; retire the newest if there are too many.
        """
        active = self.active()
        for extra in active[self.target :][::-1]:
            self.log.info("txflip run: retiring worker pid {pid}", pid=extra.pid)
            self.retire(extra)
        missing = self.target - len(active)
        if missing <= 0 or self.restartCall is not None:
            return
        delay = backoff(self.failures)
        if delay:
            self.note = f"{self.note or 'workers missing'}; restarting in {delay:g} s"
            self.log.warn("txflip run: {note}", note=self.note)
            self.restartCall = self.reactor.callLater(delay, self.events.restart)
            return
        for _ in range(missing):
            self.spawn(self.generation)

    def finishUpgrade(self, outcome: str, result: object) -> None:
        self.lastUpgrade = (time.time(), outcome)
        pending, self.pending = self.pending, None
        self.new, self.old = [], []
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if pending is not None:
            self.later(pending, result)


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
        s.target = max(1, s.target + delta)
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


class Supervisor:
    """
    Runs C{target} workers of C{command} on the sockets of C{sockets}, upgrades
    them one by one, and stops them.

    Workers' events arrive here first: whether a worker is one of the upgrade's
    new ones, one being retired, or one nobody asked to stop decides which input
    the machine gets.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        command: Command,
        environ: Mapping[str, str],
        sockets: Sockets,
        *,
        workers: int,
        upgradeTimeout: float,
        probation: float,
        drainTimeout: float,
        notifier: Notifier,
    ) -> None:
        self._reactor = reactor
        self.startedAt = time.time()
        self._core = _Core(
            reactor,
            command,
            environ,
            sockets,
            notifier,
            self._log,
            workers,
            upgradeTimeout,
            probation,
            drainTimeout,
        )
        self._core.events = self
        self._machine: _Supervisor = _Machine(self._core)
        self._joiners: list[Deferred[list[int]]] | None = None

    # -- the public API: one line each --------------------------------------------

    @property
    def clock(self) -> Any:
        return self._reactor

    def start(self) -> Deferred[None]:
        self._machine.start()
        return self._core.startup

    def stop(self) -> Deferred[None]:
        done = self._machine.stop()
        self._checkGone()
        return done

    def resize(self, delta: int) -> None:
        self._machine.resize(delta)

    def upgrade(self, join: bool = False) -> Deferred[list[int]]:
        """
        Fires with the new workers' pids, or fails with the reason.

        @param join: an upgrade in progress is joined, not refused.
        """
        if join and self._joiners is not None:
            joined: Deferred[list[int]] = Deferred()
            self._joiners.append(joined)
            return joined
        upgrading = self._machine.upgrade()
        if not upgrading.called:
            self._joiners = []
            upgrading.addBoth(self._upgradeFinished)
        return upgrading

    def _upgradeFinished(self, result: Any) -> Any:
        joiners, self._joiners = self._joiners or [], None
        for joiner in joiners:
            joiner.callback(result)
        return result

    @property
    def workers(self) -> list[Worker]:
        return list(self._core.workers)

    @property
    def failure(self) -> str | None:
        return self._core.failure

    def whenStopped(self) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        self._core.stopped.addBoth(lambda _: done.callback(None))
        return done

    def signalWorkers(self, name: str) -> None:
        for worker in self._core.workers:
            worker.signal(name)

    def status(self) -> dict[str, object]:
        s = self._core
        last = None
        if s.lastUpgrade is not None:
            last = {"at": s.lastUpgrade[0], "result": s.lastUpgrade[1]}
        workers = [w.status() for w in s.workers if w.state != "gone"]
        counts = [w["connections"] for w in workers if w["state"] == "ready"]
        return {
            "pid": os.getpid(),
            "supervisor": True,
            "state": s.phase,
            "generation": s.generation,
            "ready": s.phase in ("serving", "upgrading", "probation"),
            "uptime": round(time.time() - self.startedAt, 3),
            "connections": sum(c for c in counts if isinstance(c, int)),
            "listeners": s.sockets.describe(),
            "wanted": s.target,
            "workers": workers,
            "note": s.note,
            "lastUpgrade": last,
        }

    # -- worker events (WorkerEvents) --------------------------------------------

    def workerReady(self, worker: Worker) -> None:
        if worker in self._core.new:
            if self._machine._newReady(worker):
                if self._core.probation:
                    self._machine._beginProbation()
                else:
                    self._machine._upgradeDone()
        elif self._machine._workerReady(worker):
            self._machine._started()

    def workerFailed(self, worker: Worker, reason: str) -> None:
        self._gone(worker, reason, after=False)

    def workerEnded(self, worker: Worker, how: str) -> None:
        self._gone(worker, f"{how} after ready", after=True)

    def _gone(self, worker: Worker, reason: str, after: bool) -> None:
        self._core.workers.remove(worker)
        if worker.retiring:
            self._log.info(
                "txflip run: worker pid {pid} is gone ({reason})",
                pid=worker.pid,
                reason=reason.replace(" after ready", ""),
            )
        elif worker in self._core.new:
            message = f"worker pid {worker.pid} {reason}" if after else reason
            if after and self._core.probation:
                message = f"rolled back: {message}"
            self._machine._newFailed(message)
        else:
            self._machine._crashed(worker, reason)
        self._checkGone()

    def spawnFailed(self, reason: str) -> None:
        """
        A worker could not even be spawned (C{fork} failed, say).
        """
        s = self._core
        if s.phase == "upgrading":
            self._machine._newFailed(reason)
        elif s.phase == "starting":
            s.failure = reason
            self.stop()
        elif s.phase == "serving" and s.restartCall is None:
            s.failures += 1
            s.note = reason
            s.restartCall = self._reactor.callLater(backoff(s.failures), self.restart)

    def probationOver(self) -> None:
        self._core.timer = None
        self._machine._upgradeDone()

    def restart(self) -> None:
        self._machine._restart()

    def _checkGone(self) -> None:
        if self._core.phase == "stopping" and not self._core.workers:
            self._machine._allGone()
