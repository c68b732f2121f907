"""
C{txflip run} out of file descriptors: a supervisor of many workers holds
pipes and sockets for each (two generations' during an upgrade).  Running out
is said in one line; nothing is left behind, nothing raised unhandled.
"""

from __future__ import annotations

import errno
import resource
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.supervised import Supervised, flipecho
from txflip.run._limits import describe

#: Runs the rest of its command line with its open-file limit at argv[1].
LIMITED = (
    "import os, resource, sys; n = int(sys.argv[1]);"
    " resource.setrlimit(resource.RLIMIT_NOFILE, (n, n));"
    " os.execv(sys.argv[2], sys.argv[2:])"
)


@pytest.mark.parametrize("preload", ["--preload", "--no-preload"])
def test_tooFewFileDescriptorsToStartSaysSoInOneLine(
    tmp_path: Path, preload: str
) -> None:
    """
    Thirty workers with 56 fds (each needs a few, and the supervisor about 20):
    C{txflip run} exits 1 with the reason, and without the unhandled
    C{TypeError} a worker never forked raised (its start reported pid L{None}),
    or hanging.
    """
    run = Supervised(
        tmp_path,
        flipecho(),
        "--workers",
        "30",
        preload,
        prefix=[sys.executable, "-c", LIMITED, "56"],
    )
    try:
        assert run.proc.waitExit(30) == 1
        log = run.logText()
        assert "txflip run: cannot start" in log, log[-3000:]
        assert "Unhandled error" not in log and "Traceback" not in log, log[-3000:]
        assert "pid None" not in log, log[-3000:]
        assert not run.pidfile.exists() and not run.control.exists()
    finally:
        run.close()


def test_runningOutOfFileDescriptorsSaysTheLimit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    said = describe(OSError(errno.EMFILE, "Too many open files"))
    assert said == (
        f"[Errno 24] Too many open files (the limit is {soft}: raise it with"
        " ulimit -n, or systemd's LimitNOFILE=)"
    )
    assert describe(OSError(errno.ENOENT, "No such file")) == "[Errno 2] No such file"


def test_aWorkerRefusedAtOnceFailsTheStartWithoutAPid() -> None:
    """
    A worker its template refuses at once (the zygote could not be started:
    out of fds) fails the supervisor's start with the reason.  Its start is
    not reported as pid L{None}, which the balancing table refused with a
    C{TypeError}, unhandled.
    """
    from twisted.internet.testing import MemoryReactorClock
    from twisted.logger import (
        ILogObserver,
        LogEvent,
        formatEvent,
        globalLogPublisher,
    )
    from zope.interface import provider

    from txflip.generation._command import Command
    from txflip.generation._spawn import Spawn
    from txflip.listen._fds import Listeners
    from txflip.run._forked import PreloadedWorker
    from txflip.run._supervisor import Supervisor
    from txflip.run._workers import Sockets
    from txflip.systemd import Notifier

    reason = "cannot start the preloading zygote: [Errno 24] Too many open files"
    refused: list[PreloadedWorker] = []

    def spawner(reactor: Any, spawn: Spawn, afterReady: Any) -> PreloadedWorker:
        worker = PreloadedWorker(reactor, spawn, afterReady)
        worker.notForked(reason)
        refused.append(worker)
        return worker

    said: list[str] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        said.append(formatEvent(event))

    clock = MemoryReactorClock()
    supervisor = Supervisor(
        clock,
        Command("/bin/false", (), "/"),
        {},
        Sockets(Listeners()),
        workers=2,
        upgradeTimeout=60,
        probation=0,
        drainTimeout=60,
        notifier=Notifier(None),
        balance=True,
        spawner=spawner,
    )
    globalLogPublisher.addObserver(observe)
    try:
        started = supervisor.start()
        clock.advance(0)
    finally:
        globalLogPublisher.removeObserver(observe)
    errors: list[str] = []
    started.addErrback(lambda f: errors.append(f.getErrorMessage()))
    assert errors and reason in errors[0], errors
    assert len(refused) == 2
    for worker in refused:
        assert worker.started.result is None  # its failure handled, not a TypeError
    assert not [line for line in said if "pid None" in line], said
