"""
Unit tests for txflip.control._reports.Reports: every failed upgrade is logged with
its reason, whatever failed (a spawner that raises, as C{socketpair} does when the
process is out of fds, is not the generation machine's to log).
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure

from txflip import Upgrader
from txflip._errors import ChildFailed
from txflip.control._reports import Reports
from txflip.generation._command import Command
from txflip.generation._process import ProcessState
from txflip.generation._spawn import Spawn
from txflip.systemd import Notifier

COMMAND = Command("/nonexistent/python", ("python", "-m", "app"), "/")


def outOfFds(reactor: Any, spawn: Spawn) -> Any:
    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


def test_spawnerOutOfFdsIsLogged() -> None:
    upgrader = Upgrader(
        MemoryReactorClock(),
        command=COMMAND,
        environ={},
        spawner=outOfFds,
        process=ProcessState(),
    )
    upgrader.ready()
    reports = Reports(upgrader, Notifier(None))
    with capturedLogs() as events:
        results: list[object] = []
        reports.upgrade().addBoth(results.append)
    [result] = results
    assert isinstance(result, Failure) and result.check(ChildFailed)
    errors = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.error]
    assert errors == [
        "txflip: upgrade failed: cannot start the next generation: [Errno 24]"
        f" Too many open files; still serving (pid {os.getpid()})"
    ], [formatEvent(e) for e in events]
    assert reports.lastUpgrade is not None
    assert "Too many open files" in reports.lastUpgrade[1]
