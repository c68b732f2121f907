"""
The supervisor of C{txflip run}, as one typed automat machine: its inputs
(L{_Inputs}), its data (L{_Core}, and L{_Upgrade} while an upgrade runs), its
rules (L{_makeMachine}), and the public front (L{Supervisor}) whose methods each
give the machine one input.  Workers report straight to the machine (it is their
L{txflip.run._workers.WorkerEvents}); the processes themselves are
L{txflip.run._workers.Worker}s.

A worker that fails while the service starts makes C{txflip run} exit with the
reason; one that dies while serving is replaced, with a backoff; a new worker
that fails during an upgrade fails it (the old workers serve on), and one that
dies during the probation rolls the upgrade back.

Rules that decide on another input (every first worker serves, the last new
one does, a worker is gone) give it to the machine from inside the transition:
automat runs it once the transition is over.
"""

from __future__ import annotations

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

from txflip import _errors
from txflip._errors import NotReady, UpgradeError
from txflip._jsonlog import UPGRADE_ID, newUpgradeId
from txflip._jsonlog import context as logContext
from txflip.control._metrics import Counts
from txflip.generation._command import Command
from txflip.run._backoff import STABLE, backoff
from txflip.run._balance import MAX_WORKERS, Table
from txflip.run._limits import describe
from txflip.run._status import supervisorStatus
from txflip.run._workers import Sockets, Worker, WorkerSpawner, spawnWorker
from txflip.systemd import Notifier


class _Inputs(Protocol):
    def start(self) -> None:
        "Start the workers."

    def upgrade(self, join: bool) -> Deferred[list[int]]:
        "Replace every worker by a new one (or join the upgrade in progress)."

    def stop(self) -> Deferred[None]:
        "Stop every worker gracefully."

    def resize(self, delta: int) -> None:
        "One worker more (+1) or fewer (-1)."

    def phase(self) -> str:
        "The state's name, for the status report."

    def workerReady(self, worker: Worker) -> None:
        "C{worker} serves."

    def workerFailed(self, worker: Worker, reason: str) -> None:
        "C{worker} is gone without having become ready."

    def workerEnded(self, worker: Worker, how: str) -> None:
        "C{worker} is gone after it was ready."

    def spawnFailed(self, reason: str) -> None:
        "A worker could not even be spawned (C{fork} failed, say)."

    def _started(self) -> None:
        "Every first worker serves."

    def _crashed(self, worker: Worker, reason: str) -> None:
        "A worker nobody asked to stop is gone."

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

    def _runQueued(self) -> None:
        "The upgrade is over and another was asked for meanwhile: run it."


@dataclass
class _Upgrade:
    """
    The upgrade in progress (states Upgrading and Probation).
    """

    #: What the caller of L{Supervisor.upgrade} waits on, and those who joined.
    pending: Deferred[list[int]]
    old: list[Worker]
    count: int
    new: list[Worker] = field(default_factory=list)
    joiners: list[Deferred[list[int]]] = field(default_factory=list)
    #: The end of the probation.
    timer: IDelayedCall | None = None
    started: float = field(default_factory=time.time)
    #: When every new worker was ready.
    readyAt: float | None = None
    #: On the log lines of the upgrade (L{txflip._jsonlog}), ours and the new
    #: workers'.
    id: str = field(default_factory=newUpgradeId)


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
    spawner: WorkerSpawner
    #: An upgrade starts every new worker at once (preloaded workers cost a fork
    #: each), not one after another as old ones drain (exec: a chain).
    together: bool
    #: The workers' balancing table and its fd (L{txflip.run._balance}), if any.
    balance: tuple[Table, int] | None = None
    generation: int = 1
    workers: list[Worker] = field(default_factory=list)
    startup: Deferred[None] = field(default_factory=Deferred)
    stopped: Deferred[None] = field(default_factory=Deferred)
    #: Why the service could not start, if it could not.
    failure: str | None = None
    upgrade: _Upgrade | None = None
    #: Who asked for an upgrade while one ran: one further upgrade, for them all.
    queued: list[Deferred[list[int]]] = field(default_factory=list)
    lastUpgrade: tuple[float, str] | None = None
    # Replacing workers that died:
    failures: int = 0
    restartCall: IDelayedCall | None = None
    note: str | None = None
    #: The service's counters (L{txflip.control._metrics}): we own them.
    counts: Counts = field(default_factory=Counts)

    def counted(self, wire: object) -> None:
        """
        A worker reported what became of its connections.
        """
        try:
            self.counts = self.counts.plus(Counts.fromWire(wire))
        except ValueError as e:
            self.log.warn("txflip run: a worker's bad counts: {e}", e=e)

    def active(self) -> list[Worker]:
        return [w for w in self.workers if not w.retiring and w.state != "gone"]

    def isNew(self, worker: Worker) -> bool:
        return self.upgrade is not None and worker in self.upgrade.new

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

    def later(self, d: Deferred[Any], result: object) -> None:
        """
        Fire C{d} from the reactor, outside the machine's transition: its
        callbacks may give the machine its next input.
        """
        method = d.errback if isinstance(result, Failure) else d.callback
        self.reactor.callLater(0, method, result)


# -- the steps the rules share --------------------------------------------------


def spawn(c: _Inputs, s: _Core, generation: int) -> Worker | None:
    environ = s.environ
    if s.upgrade is not None and generation > s.generation:
        environ = {**environ, UPGRADE_ID: s.upgrade.id}
    try:
        worker = Worker(
            s.reactor,
            s.command,
            environ,
            generation,
            s.sockets,
            c,
            s.upgradeTimeout,
            s.successorFor,
            s.balance,
            s.spawner,
            s.counted,
        )
    except Exception as e:  # noqa: BLE001 - reported as the worker's failure
        why = describe(e)
        s.log.error("txflip run: cannot start a worker: {why}", why=why)
        s.reactor.callLater(0, c.spawnFailed, f"cannot start: {why}")
        return None
    s.workers.append(worker)
    return worker


def topUp(c: _Inputs, s: _Core) -> None:
    """
    Serving: start workers until there are C{target}, after the backoff if
    workers keep failing; retire the newest if there are too many.
    """
    active = s.active()
    for extra in active[s.target :][::-1]:
        s.log.info("txflip run: retiring worker pid {pid}", pid=extra.pid)
        s.retire(extra)
    missing = s.target - len(active)
    if missing <= 0 or s.restartCall is not None:
        return
    delay = backoff(s.failures)
    if delay:
        s.note = f"{s.note or 'workers missing'}; restarting in {delay:g} s"
        s.log.warn("txflip run: {note}", note=s.note)
        s.restartCall = s.reactor.callLater(delay, c._restart)
        return
    for _ in range(missing):
        spawn(c, s, s.generation)


def finishUpgrade(s: _Core, outcome: str, result: object) -> None:
    upgrade, s.upgrade = s.upgrade, None
    s.lastUpgrade = (time.time(), outcome)
    if upgrade is None:
        return
    logContext.upgradeId, logContext.generation = None, s.generation
    if not outcome.startswith("refused"):
        count(s.counts, outcome, upgrade)
    if upgrade.timer is not None and upgrade.timer.active():
        upgrade.timer.cancel()
    for waiting in (upgrade.pending, *upgrade.joiners):
        s.later(waiting, result)


def count(counts: Counts, outcome: str, upgrade: _Upgrade) -> None:
    """
    Count an upgrade that ended with C{outcome}, and how long its new workers
    took to be ready (not counting the probation).
    """
    if outcome.startswith("succeeded"):
        took = (upgrade.readyAt or time.time()) - upgrade.started
        counts.upgraded("succeeded", took)
    elif outcome.startswith("failed: rolled back"):
        counts.upgraded("rolled_back")
    else:
        counts.upgraded("failed")


def runQueued(c: _Inputs, s: _Core) -> None:
    """
    The upgrade just ended: start the one asked for meanwhile, if any (it may
    carry code the ended one did not have).
    """
    if s.queued:
        c._runQueued()


def beginStop(c: _Inputs, s: _Core) -> None:
    if s.restartCall is not None and s.restartCall.active():
        s.restartCall.cancel()
    s.restartCall = None
    s.notifier.stopping(f"stopping: draining {len(s.active())} workers")
    for worker in s.workers:
        s.retire(worker)
    if s.upgrade is not None:
        finishUpgrade(s, "refused: terminating", Failure(_errors.Stopping()))
    queued, s.queued = s.queued, []
    for waiting in queued:
        s.later(waiting, Failure(_errors.Stopping()))
    if not s.startup.called:
        s.later(s.startup, Failure(UpgradeError(s.failure or "terminating")))
    if not s.workers:
        c._allGone()


def whenStopped(s: _Core) -> Deferred[None]:
    done: Deferred[None] = Deferred()
    s.stopped.addBoth(lambda _: done.callback(None))
    return done


def gone(c: _Inputs, s: _Core, worker: Worker, reason: str, after: bool) -> None:
    """
    A worker is gone: expected if it was retiring, an upgrade's failure if it
    was new, a crash otherwise.
    """
    s.workers.remove(worker)
    if worker.retiring:
        s.log.info(
            "txflip run: worker pid {pid} {how}"
            if after
            else "txflip run: worker pid {pid} is gone ({how})",
            pid=worker.pid,
            how=reason.replace(" after ready", ""),
        )
    elif s.isNew(worker):
        message = f"worker pid {worker.pid} {reason}" if after else reason
        if after and s.probation:
            message = f"rolled back: {message}"
        c._newFailed(message)
    else:
        c._crashed(worker, reason)
    if not s.workers:
        c._allGone()


#: How the system says a port is taken (C{EADDRINUSE}); txflip's own words for
#: a C{flip:} listener the supervisor could not bind are lower case.
PORT_TAKEN = "Address already in use"
#: What to do when a worker's own listener collides with another worker's.
SHARE_PORT = (
    "each worker binds a plain tcp: listener itself: listen on flip:tcp:PORT"
    " so that the supervisor shares one socket"
)


def hinted(s: _Core, reason: str) -> str:
    """
    C{reason}, a worker's failure to start, with the way out when the cause is
    most likely ours: a port the system says is taken while another of our
    workers runs (several workers, or an upgrade's new one beside the old) is
    one its plain C{tcp:} listener bound first.
    """
    if PORT_TAKEN in reason and len(s.workers) > 1:
        return f"{reason}; {SHARE_PORT}"
    return reason


# -- the rules --------------------------------------------------------------------


def _makeMachine() -> Any:
    machine = TypeMachineBuilder(_Inputs, _Core)
    Idle = machine.state("Idle")
    Starting = machine.state("Starting")
    Serving = machine.state("Serving")
    Upgrading = machine.state("Upgrading")
    Probation = machine.state("Probation")
    Stopping = machine.state("Stopping")
    Stopped = machine.state("Stopped")
    busy = (Upgrading, Probation)
    everyState = (Idle, Starting, Serving, *busy, Stopping, Stopped)

    def workerFailed(c: _Inputs, s: _Core, worker: Worker, reason: str) -> None:
        gone(c, s, worker, hinted(s, reason), after=False)

    def workerEnded(c: _Inputs, s: _Core, worker: Worker, how: str) -> None:
        gone(c, s, worker, f"{how} after ready", after=True)

    for state in everyState:
        state.upon(_Inputs.phase).loop().returns(state.name.lower())
        state.upon(_Inputs.workerFailed).loop()(workerFailed)
        state.upon(_Inputs.workerEnded).loop()(workerEnded)

    @pep614(Idle.upon(_Inputs.start).to(Starting))
    def start(c: _Inputs, s: _Core) -> None:
        for _ in range(s.target):
            spawn(c, s, s.generation)

    @pep614(Starting.upon(_Inputs.workerReady).loop())
    def firstReady(c: _Inputs, s: _Core, worker: Worker) -> None:
        if all(w.state == "ready" for w in s.active()):
            c._started()

    @pep614(Serving.upon(_Inputs.workerReady).loop())
    @pep614(Probation.upon(_Inputs.workerReady).loop())
    @pep614(Stopping.upon(_Inputs.workerReady).loop())
    def replacementReady(c: _Inputs, s: _Core, worker: Worker) -> None:
        if s.isNew(worker):
            return  # on probation already
        s.log.info("txflip run: worker pid {pid} is ready", pid=worker.pid)
        if len(s.active()) >= s.target:
            s.note = None

    @pep614(Starting.upon(_Inputs._started).to(Serving))
    def started(c: _Inputs, s: _Core) -> None:
        pids = " ".join(str(w.pid) for w in s.active())
        s.log.info("txflip run: serving (workers {pids})", pids=pids)
        s.notifier.ready(f"serving: {len(s.active())} workers (pids {pids})")
        s.later(s.startup, None)
        topUp(c, s)

    # -- failures ----------------------------------------------------------------

    @pep614(Starting.upon(_Inputs._crashed).to(Stopping))
    def cannotStart(c: _Inputs, s: _Core, worker: Worker, reason: str) -> None:
        s.failure = reason
        s.log.critical("txflip run: cannot start: {reason}", reason=reason)
        beginStop(c, s)

    @pep614(Serving.upon(_Inputs._crashed).loop())
    def crashed(c: _Inputs, s: _Core, worker: Worker, reason: str) -> None:
        if worker.readyAt is not None and worker.uptime >= STABLE:
            s.failures = 0
        else:
            s.failures += 1
        s.counts.restarts += 1
        s.note = f"worker pid {worker.pid} {reason}"
        s.log.error("txflip run: {note}; replacing it", note=s.note)
        topUp(c, s)

    @pep614(Upgrading.upon(_Inputs._crashed).loop())
    @pep614(Probation.upon(_Inputs._crashed).loop())
    @pep614(Stopping.upon(_Inputs._crashed).loop())
    def crashedMeanwhile(c: _Inputs, s: _Core, worker: Worker, reason: str) -> None:
        # Replaced (if still needed) once the upgrade is over.
        s.log.error(
            "txflip run: worker pid {pid} {reason}", pid=worker.pid, reason=reason
        )

    @pep614(Serving.upon(_Inputs._restart).loop())
    def restart(c: _Inputs, s: _Core) -> None:
        s.restartCall = None
        for _ in range(s.target - len(s.active())):
            spawn(c, s, s.generation)

    @pep614(Starting.upon(_Inputs.spawnFailed).to(Stopping))
    def cannotSpawnFirst(c: _Inputs, s: _Core, reason: str) -> None:
        s.failure = reason
        stop(c, s)

    @pep614(Serving.upon(_Inputs.spawnFailed).loop())
    def cannotSpawn(c: _Inputs, s: _Core, reason: str) -> None:
        if s.restartCall is None:
            s.failures += 1
            s.note = reason
            s.restartCall = s.reactor.callLater(backoff(s.failures), c._restart)

    # -- upgrades ----------------------------------------------------------------

    @pep614(Idle.upon(_Inputs.upgrade).loop())
    @pep614(Starting.upon(_Inputs.upgrade).loop())
    def notReady(c: _Inputs, s: _Core, join: bool) -> Deferred[list[int]]:
        return fail(NotReady())

    @pep614(Upgrading.upon(_Inputs.upgrade).loop())
    @pep614(Probation.upon(_Inputs.upgrade).loop())
    def inProgress(c: _Inputs, s: _Core, join: bool) -> Deferred[list[int]]:
        """
        Joining waits for the outcome of the upgrade in progress; anything else
        queues one further upgrade (every request made meanwhile shares it), run
        once the current one ends: the code may have changed since it started.
        """
        waiting: Deferred[list[int]] = Deferred()
        if join and s.upgrade is not None:
            s.upgrade.joiners.append(waiting)
            return waiting
        if not s.queued:
            s.log.info("txflip run: an upgrade runs: the next one is queued")
        s.queued.append(waiting)
        return waiting

    @pep614(Stopping.upon(_Inputs.upgrade).loop())
    @pep614(Stopped.upon(_Inputs.upgrade).loop())
    def terminating(c: _Inputs, s: _Core, join: bool) -> Deferred[list[int]]:
        return fail(_errors.Stopping())

    @pep614(Serving.upon(_Inputs.upgrade).to(Upgrading))
    def startUpgrade(c: _Inputs, s: _Core, join: bool) -> Deferred[list[int]]:
        return beginUpgrade(c, s, [Deferred()])

    @pep614(Serving.upon(_Inputs._runQueued).to(Upgrading))
    def startQueued(c: _Inputs, s: _Core) -> None:
        queued, s.queued = s.queued, []
        beginUpgrade(c, s, queued)

    def beginUpgrade(
        c: _Inputs, s: _Core, waiting: list[Deferred[list[int]]]
    ) -> Deferred[list[int]]:
        if s.restartCall is not None and s.restartCall.active():
            s.restartCall.cancel()
        s.restartCall = None
        s.upgrade = _Upgrade(waiting[0], s.active(), s.target, joiners=waiting[1:])
        logContext.upgradeId = s.upgrade.id
        s.notifier.reloading(f"upgrading: starting generation {s.generation + 1}")
        s.log.info(
            "txflip run: upgrading {n} workers to generation {g}",
            n=s.upgrade.count,
            g=s.generation + 1,
        )
        for _ in range(s.upgrade.count if s.together else 1):
            nextNew(c, s)
        return s.upgrade.pending

    def nextNew(c: _Inputs, s: _Core) -> None:
        worker = spawn(c, s, s.generation + 1)
        if worker is not None and s.upgrade is not None:
            s.upgrade.new.append(worker)

    @pep614(Upgrading.upon(_Inputs.workerReady).loop())
    def readyWhileUpgrading(c: _Inputs, s: _Core, worker: Worker) -> None:
        upgrade = s.upgrade
        if upgrade is None or worker not in upgrade.new:
            return replacementReady(c, s, worker)
        readyNew = [w for w in upgrade.new if w.state == "ready"]
        s.log.info(
            "txflip run: new worker pid {pid} is ready ({i}/{n})",
            pid=worker.pid,
            i=len(readyNew),
            n=upgrade.count,
        )
        if not s.probation:
            # Chain: one old worker drains for each new one that serves.
            serving = [w for w in upgrade.old if not w.retiring and w.state != "gone"]
            if serving:
                s.retire(serving[0])
        if len(upgrade.new) < upgrade.count:
            nextNew(c, s)
            return
        if len(readyNew) < upgrade.count:
            return  # started together: the others are still starting
        upgrade.readyAt = time.time()
        if s.probation:
            c._beginProbation()
        else:
            c._upgradeDone()

    @pep614(Upgrading.upon(_Inputs._beginProbation).to(Probation))
    def beginProbation(c: _Inputs, s: _Core) -> None:
        s.log.info(
            "txflip run: every new worker serves; probation for {p:g} s",
            p=s.probation,
        )
        if s.upgrade is not None:
            s.upgrade.timer = s.reactor.callLater(s.probation, c._upgradeDone)

    @pep614(Upgrading.upon(_Inputs._upgradeDone).to(Serving))
    @pep614(Probation.upon(_Inputs._upgradeDone).to(Serving))
    def upgradeDone(c: _Inputs, s: _Core) -> None:
        s.generation += 1
        new, old = (s.upgrade.new, s.upgrade.old) if s.upgrade else ([], [])
        pids = [w.pid for w in new]
        for worker in old:
            s.retire(worker)
        s.log.info(
            "txflip run: upgrade done: generation {g} serves (pids {pids})",
            g=s.generation,
            pids=" ".join(map(str, pids)),
        )
        s.notifier.stillReady(f"serving: generation {s.generation} (pids {pids})")
        finishUpgrade(s, f"succeeded: pids {' '.join(map(str, pids))} serve", pids)
        s.failures = 0
        topUp(c, s)
        runQueued(c, s)

    @pep614(Upgrading.upon(_Inputs._newFailed).to(Serving))
    @pep614(Upgrading.upon(_Inputs.spawnFailed).to(Serving))
    @pep614(Probation.upon(_Inputs._newFailed).to(Serving))
    def upgradeFailed(c: _Inputs, s: _Core, reason: str) -> None:
        if s.upgrade is not None:
            # A new worker that replaced a drained old one keeps serving (no
            # probation: chain); any other is stopped, and the old ones serve on.
            new, old = s.upgrade.new, s.upgrade.old
            ready = [w for w in new if w.state == "ready" and not w.retiring]
            replaced = sum(1 for w in old if w.retiring)
            starting = [w for w in new if w.state == "starting"]
            for worker in ready[replaced:] + starting:
                s.retire(worker)
        s.log.error("txflip run: upgrade failed: {reason}", reason=reason)
        s.notifier.stillReady(f"upgrade failed: {reason}; serving")
        finishUpgrade(s, f"failed: {reason}", Failure(UpgradeError(reason)))
        topUp(c, s)
        runQueued(c, s)

    # -- size --------------------------------------------------------------------

    @pep614(Serving.upon(_Inputs.resize).loop())
    def resizeNow(c: _Inputs, s: _Core, delta: int) -> None:
        resizeLater(c, s, delta)
        topUp(c, s)

    @pep614(Idle.upon(_Inputs.resize).loop())
    @pep614(Starting.upon(_Inputs.resize).loop())
    @pep614(Upgrading.upon(_Inputs.resize).loop())
    @pep614(Probation.upon(_Inputs.resize).loop())
    @pep614(Stopping.upon(_Inputs.resize).loop())
    @pep614(Stopped.upon(_Inputs.resize).loop())
    def resizeLater(c: _Inputs, s: _Core, delta: int) -> None:
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

    @pep614(Idle.upon(_Inputs.stop).to(Stopping))
    @pep614(Starting.upon(_Inputs.stop).to(Stopping))
    @pep614(Serving.upon(_Inputs.stop).to(Stopping))
    @pep614(Upgrading.upon(_Inputs.stop).to(Stopping))
    @pep614(Probation.upon(_Inputs.stop).to(Stopping))
    def stop(c: _Inputs, s: _Core) -> Deferred[None]:
        s.log.info("txflip run: stopping {n} workers", n=len(s.active()))
        beginStop(c, s)
        return whenStopped(s)

    @pep614(Stopping.upon(_Inputs.stop).loop())
    @pep614(Stopped.upon(_Inputs.stop).loop())
    def alreadyStopping(c: _Inputs, s: _Core) -> Deferred[None]:
        return succeed(None) if s.stopped.called else whenStopped(s)

    @pep614(Stopping.upon(_Inputs._allGone).to(Stopped))
    def allGone(c: _Inputs, s: _Core) -> None:
        s.later(s.stopped, None)

    # -- every other input is ignored where it is not listed above ---------------

    ignored: dict[Any, tuple[Any, ...]] = {
        _Inputs.start: (Starting, Serving, *busy, Stopping, Stopped),
        _Inputs.workerReady: (Idle, Stopped),
        _Inputs.spawnFailed: (Idle, Probation, Stopping, Stopped),
        _Inputs._started: (Idle, Serving, *busy, Stopping, Stopped),
        _Inputs._crashed: (Idle, Stopped),
        _Inputs._newFailed: (Idle, Starting, Serving, Stopping, Stopped),
        _Inputs._beginProbation: (
            Idle,
            Starting,
            Serving,
            Probation,
            Stopping,
            Stopped,
        ),
        _Inputs._upgradeDone: (Idle, Starting, Serving, Stopping, Stopped),
        _Inputs._restart: (Idle, Starting, *busy, Stopping, Stopped),
        _Inputs._allGone: (Idle, Starting, Serving, *busy, Stopped),
        _Inputs._runQueued: (Idle, Starting, *busy, Stopping, Stopped),
    }
    for method, states in ignored.items():
        for state in states:
            state.upon(method).loop().returns(None)
    return machine.build()


_Machine = _makeMachine()


class Supervisor:
    """
    Runs C{workers} workers of C{command} on the sockets of C{sockets}, upgrades
    them one by one, and stops them: each method gives its machine one input.
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
        balance: bool = True,
        spawner: WorkerSpawner = spawnWorker,
        together: bool = False,
    ) -> None:
        """
        @param balance: spread connections across the workers (L{txflip.run._balance}).
        @param spawner: starts a worker's process (a fake one in tests).
        @param together: an upgrade starts every new worker at once (preloading).
        """
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
            spawner,
            together,
            Table.create() if balance else None,
        )
        self._machine: _Inputs = _Machine(self._core)

    @property
    def clock(self) -> Any:
        return self._core.reactor

    def start(self) -> Deferred[None]:
        self._machine.start()
        return self._core.startup

    def stop(self) -> Deferred[None]:
        return self._machine.stop()

    def resize(self, delta: int) -> None:
        self._machine.resize(delta)

    def upgrade(self, join: bool = False) -> Deferred[list[int]]:
        """
        Fires with the new workers' pids, or fails with the reason.

        @param join: an upgrade in progress is joined, not refused.
        """
        return self._machine.upgrade(join)

    @property
    def workers(self) -> list[Worker]:
        return list(self._core.workers)

    @property
    def failure(self) -> str | None:
        return self._core.failure

    def whenStopped(self) -> Deferred[None]:
        return whenStopped(self._core)

    def signalWorkers(self, name: str) -> None:
        for worker in self._core.workers:
            worker.signal(name)

    def counts(self) -> Counts:
        """
        The service's counters (L{txflip.run._admin}).
        """
        return self._core.counts

    def status(self) -> dict[str, object]:
        return supervisorStatus(self._machine.phase(), self.startedAt, self._core)
