"""
End to end: signals that reach a generation while it starts, and SIGUSR1 at any
time.  A process-group signal (C{systemctl kill -s USR1}, a log rotator, a
terminal's Ctrl-C) reaches the starting generation too, before it has a handler:
the parent starts it with every signal txflip or twistd handles blocked, and each
waits for its handler.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import (
    SUBREAPER,
    alone,
    echo,
    signalStartingChild,
    upgradeWorks,
    waitLine,
)
from tests.harness import pidAlive, reap, waitFor, waitForUpgrade


def reached(deadline: float) -> bool:
    return time.monotonic() >= deadline


@pytest.mark.slow
@pytest.mark.parametrize("logfile", [False, True])
def test_sigusr1ToAStartingGeneration(
    flip, fault: Path, tmp_path: Path, logfile: bool
) -> None:
    """
    SIGUSR1 while the next generation has no handler yet: it is delivered once
    the handler is installed, and the upgrade goes on.
    """
    args = (f"--logfile={tmp_path / 'echo.log'}",) if logfile else ()
    server = flip(env={"FLIPAPP_FAULT": str(fault)}, app=True, twistd=args)
    pid, child = signalStartingChild(server, fault, tmp_path / "go", signal.SIGUSR1)
    new, _, _ = waitForUpgrade(server.pidfile, pid, timeout=30)
    assert new == child
    server.track(new)
    assert echo(server.port) == b"hello\n"
    upgradeWorks(server)
    alone(server, server.serving())


@pytest.mark.slow
@pytest.mark.parametrize("logfile", [False, True])
def test_sigusr1NeverKillsAGeneration(flip, tmp_path: Path, logfile: bool) -> None:
    """
    SIGUSR1 to the whole process group, at once and repeatedly through upgrades:
    no generation dies of it, with or without --logfile (with one, the file is
    reopened: a rotated log gets the next lines).
    """
    log = tmp_path / "echo.log"
    server = flip(twistd=(f"--logfile={log}",) if logfile else ())
    group = server.proc.pid
    for delay in (0.0, 0.02, 0.06, 0.12):
        old = server.serving()
        os.kill(old, signal.SIGHUP)
        deadline = time.monotonic() + delay
        waitFor(functools.partial(reached, deadline), 2, interval=0.002)
        os.killpg(group, signal.SIGUSR1)
        new, _, _ = waitForUpgrade(server.pidfile, old, timeout=30)
        server.track(new)
        assert echo(server.port) == b"hello\n"
    assert "killed by SIGUSR1" not in server.logText()
    if logfile:
        rotated = tmp_path / "echo.log.1"
        log.rename(rotated)
        old = server.serving()
        os.kill(old, signal.SIGUSR1)
        os.kill(old, signal.SIGHUP)
        waitFor(lambda: log.exists() and "upgrade" in log.read_text(), 20)
        # The upgrade must be over before we look for the one process left.
        server.track(waitForUpgrade(server.pidfile, old, timeout=30)[0])
    alone(server, server.serving())


@pytest.mark.parametrize("stop", [signal.SIGQUIT, signal.SIGTERM, signal.SIGINT])
def test_stopSignalToAStartingGenerationWaitsForItsHandler(
    flip, fault: Path, tmp_path: Path, stop: signal.Signals
) -> None:
    """
    A stop signal that reaches the next generation before its handler is not lost
    and does not kill it: once it serves (its parent then drains and exits), it
    stops gracefully, as a signal to a running service would make it.
    """
    server = flip(env={"FLIPAPP_FAULT": str(fault)}, app=True)
    _, child = signalStartingChild(server, fault, tmp_path / "go", stop)
    waitLine(server, child, f"generation 2 ready (pid {child})")
    assert server.proc.waitExit(20) == 0
    if SUBREAPER:
        # twistd re-raises SIGTERM/SIGINT after a graceful stop.
        expected = 0 if stop == signal.SIGQUIT else -stop
        assert reap(child, 30) == expected
    waitFor(lambda: not pidAlive(child), 30, what="the graceful stop")
    assert "before it was ready" not in server.logText()
    assert not server.pidfile.exists()
