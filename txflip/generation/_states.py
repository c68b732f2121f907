"""
The vocabulary of one generation's state machine: its inputs (L{_Generation}), the
data its states carry (L{_Upgrade}, L{_Killing}; C{Replaced} carries the
successor's pid, a worker's states the L{SupervisorLink}), and the core every
transition shares (L{_Core}, with the steps the rules take: declare that we serve,
spawn the next generation, wait for the parent's exit).  The rules are in
L{txflip.generation._rules}; the diagram and the public API in L{txflip.generation._upgrader}.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from txflip._errors import ChildFailed, PidFileError
from txflip._reactor import Reactor
from txflip.generation import _handoff
from txflip.generation._command import Command
from txflip.generation._pidfile import PidFile, pidAlive
from txflip.generation._signals import releaseSignals
from txflip.generation._spawn import Attempt, Spawn, Spawner
from txflip.listen._fds import Listeners
from txflip.run._channel import SupervisorLink

T = TypeVar("T")
#: How long a child waits, once its parent's pipe is closed, for the parent to
#: have exited (a zombie, or gone) before it counts it as exited anyway.
PARENT_EXIT_WAIT = 5.0
#: Called with the next generation's number when a request starts an upgrade.
OnStart = Callable[[int], object]


class _Generation(Protocol):
    def ready(self) -> None:
        "Write the pid file (this may raise), then declare that we serve."

    def _served(self) -> None:
        "The pid file is written: tell the parent, we serve."

    def _enlist(self, link: SupervisorLink) -> None:
        "This generation is a worker of the supervisor at the end of C{link}."

    def _working(self, link: SupervisorLink) -> None:
        "The worker has told the supervisor that it serves."

    def parentPipeClosed(self) -> None:
        "Our end of the parent's pipe reads end-of-file: the parent is exiting."

    def parentExited(self) -> None:
        "The previous generation is gone."

    def upgrade(self, result: Deferred[int], onStart: OnStart | None) -> None:
        "Start the next generation; C{result} fires with its pid once it is ready."

    def join(self, result: Deferred[int], onStart: OnStart | None) -> None:
        "As L{upgrade}, but an upgrade in progress is waited for, not refused."

    def _spawned(self, attempt: Attempt, result: Deferred[int]) -> None:
        "The next generation is starting."

    def _childReady(self, pid: int) -> None:
        "The child we started says it serves."

    def _childFailed(self, reason: Failure) -> None:
        "The child we started is gone without becoming ready."

    def stop(self, result: Deferred[None]) -> None:
        "Stop for good: no more upgrades; a starting child is killed."

    def _kill(self, upgrade: _Upgrade, result: Deferred[None]) -> None:
        "Stopping while a child starts: kill it."

    def _childGone(self) -> None:
        "The child killed by L{stop} is reaped."

    def whenExit(self, result: Deferred[None]) -> None:
        "C{result} fires when this process should exit."

    def whenParentExited(self, result: Deferred[None]) -> None:
        "C{result} fires once the previous generation has exited."

    def isReady(self) -> bool:
        "Whether this generation has declared that it serves."

    def successor(self) -> int | None:
        "The pid of the generation that replaced us, once one has."


@dataclass
class _Upgrade:
    """
    An upgrade in progress: the starting child, and who waits for its outcome.
    """

    attempt: Attempt
    waiters: list[Deferred[int]]


@dataclass
class _Killing:
    upgrade: _Upgrade
    stopped: Deferred[None]


@dataclass
class _Core:
    reactor: Reactor
    listeners: Listeners
    handoff: _handoff.Handoff | None
    pidFile: PidFile | None
    command: Command
    environ: MutableMapping[str, str]
    upgradeTimeout: float
    generation: int
    spawner: Spawner
    #: The parent's pid (L{None} for a first generation).
    parentPID: int | None
    log: Logger
    #: The supervisor whose worker we are (C{txflip run}), if any: fixed for the
    #: process's life, it decides the machine's first state.
    supervisor: SupervisorLink | None = None
    #: Named fds to pass to the next generation besides the listeners.
    extraFDs: dict[str, int] = field(default_factory=dict)
    exitWaiters: list[Deferred[None]] = field(default_factory=list)
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
        """
        Whether the parent generation has exited (gone, or a zombie), though its
        pipe's end is still to be seen by the reactor.  Not "we were reparented":
        a child started detached (under systemd) never was the parent's child.
        """
        return self.parentPID is not None and not pidAlive(self.parentPID)

    def awaitParentExit(self, then: Callable[[], object]) -> None:
        """
        The parent's pipe is closed: it is exiting.  Call C{then} once it has
        exited (a zombie, or gone), or after L{PARENT_EXIT_WAIT} seconds, so that
        "the previous generation exited" is exactly true when the next upgrade
        is allowed.
        """
        deadline = self.reactor.seconds() + PARENT_EXIT_WAIT

        def check() -> None:
            if self.parentGone() or self.reactor.seconds() > deadline:
                then()
            else:
                self.reactor.callLater(0.005, check)

        check()

    def declareServing(self) -> None:
        """
        The pid file names us: say so in the log, take the signals we were born
        with blocked, and tell the parent (which then stops accepting).
        """
        # Log first, so that the shared log tells the story in order.
        self.log.info(
            "txflip: generation {generation} ready (pid {pid})",
            generation=self.generation,
            pid=os.getpid(),
        )
        # By now the reactor runs, with its SIGTERM/SIGINT handlers, and the
        # application has its own.
        releaseSignals()
        if self.handoff is not None:
            _handoff.tellParentReady(self.handoff)

    def spawnNext(self) -> Attempt:
        """
        Start the next generation with our listeners and named fds.

        @raise ChildFailed: it could not be started (one line, why).
        """
        nextGeneration = self.generation + 1
        try:
            spawn = Spawn(
                self.command,
                self.environ,
                nextGeneration,
                self.listeners.forNextGeneration(),
                self.upgradeTimeout,
                self.extraFDs,
            )
            attempt = self.spawner(self.reactor, spawn)
        except Exception as e:  # noqa: BLE001 - any reason to fail is reported
            raise ChildFailed(f"cannot start the next generation: {e}") from None
        attempt.started.addCallback(
            lambda pid: self.log.info(
                "txflip: upgrade: started generation {generation} as pid {pid}",
                generation=nextGeneration,
                pid=pid,
            )
        )
        return attempt

    def stillServing(self, reason: Failure) -> None:
        """
        An upgrade failed: say so, and name us in the pid file again (the child
        may have written it before dying).
        """
        self.log.error(
            "txflip: upgrade failed: {reason}; still serving (pid {pid})",
            reason=reason.getErrorMessage(),
            pid=os.getpid(),
        )
        if self.pidFile is not None:
            try:
                self.pidFile.write(os.getpid())
            except PidFileError as e:
                self.log.error("txflip: {error}", error=str(e))

    def closeUnclaimed(self) -> None:
        for spec in self.listeners.closeUnclaimed():
            self.log.info(
                "txflip: closed inherited {spec}: not configured any more", spec=spec
            )
