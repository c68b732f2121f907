"""
What a generation says about itself and its upgrades: systemd hears each step as it
happens (L{Notifier}: C{RELOADING=1} when an upgrade starts, C{READY=1} again with
the reason when it fails or is refused), and C{txflip status} shows the record.
"""

from __future__ import annotations

import os
import time

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from txflip._errors import (
    ChildFailed,
    Refused,
    SpawnFailed,
    Stopping,
    UpgradeInProgress,
    UpgradeTimeout,
)
from txflip.generation._machine import Upgrader
from txflip.generation._pidfile import startTime
from txflip.systemd import Notifier


class Reports:
    """
    The record of one generation: when it started and became ready, and how its
    last upgrade ended.
    """

    _log = Logger()

    def __init__(self, upgrader: Upgrader, notifier: Notifier) -> None:
        self.upgrader = upgrader
        self.notifier = notifier
        self.startedAt = time.time()
        #: When this generation became ready.
        self.readyAt: float | None = None
        #: C{(when, outcome)} of the last upgrade this generation attempted.
        self.lastUpgrade: tuple[float, str] | None = None

    def ready(self) -> None:
        """
        This generation serves: say so.
        """
        self.readyAt = time.time()
        self.notifier.ready(
            f"serving (generation {self.upgrader.generation}, pid {os.getpid()})"
        )

    def upgrade(self, join: bool = False) -> Deferred[int]:
        """
        Upgrade now; fires with the new pid, or fails (logged) with the reason.

        systemd hears C{RELOADING=1} when the upgrade starts, and C{READY=1} from
        the new generation, or from us again (with the reason) if it fails; a
        refusal is C{RELOADING=1} and C{READY=1} at once.

        @param join: if an upgrade is already in progress, wait for its outcome
            instead of being refused (what C{txflip upgrade} wants).
        """
        generation = self.upgrader.generation
        started: list[int] = []

        def start(nextGeneration: int) -> None:
            started.append(nextGeneration)
            self.notifier.reloading(f"upgrading: starting generation {nextGeneration}")

        def finished(result: int | Failure) -> int | Failure:
            if isinstance(result, Failure) and result.check(Refused):
                message = f"refused: {result.getErrorMessage()}"
                self._log.warn("txflip: upgrade {message}", message=message)
                if not result.check(UpgradeInProgress, Stopping):
                    # Complete the reload systemd may have begun
                    # (Type=notify-reload), in one message.
                    self.notifier.reloadRefused(
                        f"upgrade {message}; serving (generation {generation})"
                    )
            elif started and isinstance(result, Failure):
                message = f"failed: {result.getErrorMessage()}"
                if not _loggedByTheMachine(result):
                    self._log.error(
                        "txflip: upgrade {message}; still serving (pid {pid})",
                        message=message,
                        pid=os.getpid(),
                    )
                self.lastUpgrade = (time.time(), message)
                self.notifier.stillReady(
                    f"upgrade {message}; serving (generation {generation})"
                )
            elif started:
                self.lastUpgrade = (time.time(), f"succeeded: pid {result} serves")
            # else: it joined an upgrade another request started and reports.
            return result

        return self.upgrader.upgrade(join, start).addBoth(finished)

    def status(self, connections: int) -> dict[str, object]:
        """
        What C{txflip status} shows.
        """
        last = None
        if self.lastUpgrade is not None:
            last = {"at": self.lastUpgrade[0], "result": self.lastUpgrade[1]}
        return {
            "pid": os.getpid(),
            "generation": self.upgrader.generation,
            "ready": self.upgrader.isReady,
            "uptime": round(time.time() - self.startedAt, 3),
            "connections": connections,
            "listeners": [str(listener.spec) for listener in self.upgrader.listeners],
            "startedBy": self.startedBy(),
            "lastUpgrade": last,
        }

    def startedBy(self) -> dict[str, object]:
        """
        How this generation started: by an upgrade from which pid (or a first
        start), when (the process's start), and how long it took to be ready.
        """
        at = startTime(os.getpid()) or self.startedAt
        return {
            "pid": self.upgrader.parentPID,
            "at": at,
            "readyIn": None if self.readyAt is None else round(self.readyAt - at, 3),
        }


def _loggedByTheMachine(failure: Failure) -> bool:
    """
    Whether the generation machine logged this failed upgrade already: it logs a
    child that failed or timed out (and rewrites the pid file then), not a spawn
    that raised, nor anything unexpected.  Every failure is logged once, here or
    there, whatever its cause.
    """
    return bool(failure.check(ChildFailed, UpgradeTimeout)) and not failure.check(
        SpawnFailed
    )
