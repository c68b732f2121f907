"""
The steps the generation machine (L{txflip.generation._machine}) takes on its
transitions, and the words it logs them in: declare that we serve, start the next
generation, name us in the pid file again after a failed upgrade, close the
inherited sockets nobody claimed.  None of them decides anything: the machine does.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.logger import Logger
from twisted.python.failure import Failure

from txflip._errors import PidFileError, SpawnFailed
from txflip._reactor import Reactor
from txflip.generation import _handoff
from txflip.generation._pidfile import PidFile
from txflip.generation._signals import releaseSignals
from txflip.generation._spawn import Attempt, Spawn, Spawner
from txflip.listen._fds import Listeners


def declareServing(
    log: Logger, generation: int, handoff: _handoff.Handoff | None
) -> None:
    """
    The pid file names us: say so in the log, take the signals we were born with
    blocked, and tell the parent (which then stops accepting).
    """
    # Log first, so that the shared log tells the story in order.
    log.info(
        "txflip: generation {generation} ready (pid {pid})",
        generation=generation,
        pid=os.getpid(),
    )
    # By now the reactor runs, with its SIGTERM/SIGINT handlers, and the
    # application has its own.
    releaseSignals()
    if handoff is not None:
        _handoff.tellParentReady(handoff)


def spawnNext(
    log: Logger, reactor: Reactor, spawner: Spawner, spawn: Callable[[], Spawn]
) -> Attempt:
    """
    Start the next generation (C{spawn()}, what to start) through C{spawner}.

    @raise SpawnFailed: it could not be started (one line, why).
    """
    try:
        next = spawn()
        attempt = spawner(reactor, next)
    except Exception as e:  # noqa: BLE001 - any reason to fail is reported
        raise SpawnFailed(f"cannot start the next generation: {e}") from None
    attempt.started.addCallback(
        lambda pid: log.info(
            "txflip: upgrade: started generation {generation} as pid {pid}",
            generation=next.generation,
            pid=pid,
        )
    )
    return attempt


def stillServing(log: Logger, pidFile: PidFile | None, reason: Failure) -> None:
    """
    An upgrade failed: say so, and name us in the pid file again (the child may
    have written it before dying).
    """
    log.error(
        "txflip: upgrade failed: {reason}; still serving (pid {pid})",
        reason=reason.getErrorMessage(),
        pid=os.getpid(),
    )
    if pidFile is not None:
        try:
            pidFile.write(os.getpid())
        except PidFileError as e:
            log.error("txflip: {error}", error=str(e))


def closeUnclaimed(log: Logger, listeners: Listeners) -> None:
    """
    Close the inherited sockets nobody asked for, saying which.
    """
    for spec in listeners.closeUnclaimed():
        log.info("txflip: closed inherited {spec}: not configured any more", spec=spec)
