"""
Ctrl-C under C{txflip run}: SIGINT reaches the whole process group, the
supervisor and its workers alike.  Every worker is stopped on purpose, and the
log says so rather than reporting a crash ("was killed by SIGINT").
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

from tests.harness import pidAlive
from tests.supervised import Supervised, flipecho
from txflip.generation._exits import howItStopped


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Supervised]:
    supervised = Supervised(tmp_path, flipecho(), "--workers", "2")
    try:
        yield supervised
    finally:
        supervised.close()


@pytest.mark.slow
def test_ctrlCStopsWorkersOnRequest(run: Supervised) -> None:
    pids = run.waitReady()
    assert os.getpgid(pids[0]) == os.getpgid(run.pid)
    os.killpg(run.pid, signal.SIGINT)
    assert run.proc.waitExit(30) == 0
    assert not any(map(pidAlive, pids))
    log = run.logText()
    assert "killed by" not in log, log
    for pid in pids:
        assert re.search(rf"worker pid {pid} stopped \(SIGINT, on request\)", log), log
    assert "restart" not in log and "crash" not in log, log


@pytest.mark.parametrize(
    "ended, how",
    [
        (ProcessTerminated(signal=signal.SIGINT), "stopped (SIGINT, on request)"),
        (ProcessTerminated(signal=signal.SIGTERM), "stopped (SIGTERM, on request)"),
        (ProcessDone(0), "stopped (status 0, on request)"),
        (ProcessTerminated(signal=signal.SIGKILL), "was killed by SIGKILL"),
        (ProcessTerminated(exitCode=7), "exited with status 7"),
    ],
)
def test_howAStoppedProcessEnded(ended: Exception, how: str) -> None:
    """
    A stop signal or a clean exit is a stop; SIGKILL or a failure status is
    still reported as such.
    """
    assert howItStopped(Failure(ended)) == how
