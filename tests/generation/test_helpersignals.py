"""
A process the application starts gets the signal mask the application would have
without txflip, in every generation: a new generation is spawned with the signals
txflip handles blocked, and a helper it started before its reactor ran used to
inherit them (SigBlk 0x4207) and ignore C{kill -TERM}.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.harness import (
    ServerProcess,
    pidAlive,
    readPidFile,
    waitFor,
    waitForUpgrade,
)


def blockedSignals(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk for pid {pid}")


def helperOf(proc: ServerProcess, pid: int) -> int:
    found = waitFor(
        lambda: re.search(rf"pid {pid} started helper pid (\d+)", proc.logText()),
        20,
        what=f"the helper of pid {pid}",
    )
    return int(found.group(1))


def test_helpersOfEveryGenerationHaveNoSignalBlocked(tmp_path: Path) -> None:
    pidfile = tmp_path / "app.pid"
    argv = [
        sys.executable,
        str(ROOT / "tests" / "helperapp.py"),
        str(pidfile),
        "tcp:0:interface=127.0.0.1",
    ]
    helpers: list[int] = []
    try:
        with ServerProcess(
            argv, tmp_path / "app.log", cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}
        ) as proc:
            first = waitFor(lambda: readPidFile(pidfile), 20, what="ready")
            helpers.append(helperOf(proc, first))
            assert blockedSignals(helpers[0]) == 0
            proc.send(signal.SIGHUP)
            second, _, _ = waitForUpgrade(pidfile, first, timeout=30)
            proc.track(second)
            helpers.append(helperOf(proc, second))
            assert blockedSignals(helpers[1]) == 0, hex(blockedSignals(helpers[1]))
            os.kill(helpers[1], signal.SIGTERM)
            waitFor(lambda: not pidAlive(helpers[1]), 10, what="the helper to end")
            os.kill(second, signal.SIGQUIT)
            waitFor(lambda: not pidAlive(second), 30, what="the server to end")
    finally:
        for helper in helpers:
            if pidAlive(helper):
                os.kill(helper, signal.SIGKILL)
