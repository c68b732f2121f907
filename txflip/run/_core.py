"""
The supervisor's machine (C{txflip run}): its inputs (L{_Supervisor}) and its data
(L{_Core}), with the steps the rules share: spawning a worker, topping up to the
wanted number after a backoff, finishing an upgrade.  The rules are in
L{txflip.run._machine}; the public API in L{txflip.run._supervisor}.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from txflip.generation._command import Command
from txflip.run._balance import Table
from txflip.run._workers import Sockets, Worker
from txflip.systemd import Notifier

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
    #: The workers' balancing table and its fd (L{txflip.run._balance}), if any.
    balance: tuple[Table, int] | None = None
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
                self.balance,
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
