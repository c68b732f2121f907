"""
The supervisor of C{txflip run}: the small public API in front of its state
machine (L{txflip.run._machine}), which starts its workers, upgrades them one
by one, puts the new ones on probation and stops them.  The processes themselves
are L{txflip.run._workers.Worker}s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from txflip.generation._command import Command
from txflip.run._balance import Table
from txflip.run._core import _Core, _Supervisor, backoff
from txflip.run._machine import _Machine
from txflip.run._workers import Sockets, Worker
from txflip.systemd import Notifier


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
        balance: bool = True,
    ) -> None:
        """
        @param balance: spread connections across the workers (L{txflip.run._balance}).
        """
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
        if balance:
            self._core.balance = Table.create()
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
            # The supervisor is never anyone's successor: its pid is the service's.
            "startedBy": {"pid": None, "at": self.startedAt},
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
