"""
End to end: txflip as a library in a plain Twisted program (no twistd).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from tests.conftest import ROOT, SUBREAPER, echo
from tests.harness import (
    ServerProcess,
    freePort,
    pidAlive,
    readPidFile,
    reap,
    waitFor,
    waitForUpgrade,
)


def test_plainProgramUpgradesOnSighup(tmp_path: Path) -> None:
    pidfile = tmp_path / "app.pid"
    port = freePort()
    argv = [
        sys.executable,
        str(ROOT / "tests" / "plainapp.py"),
        str(pidfile),
        f"tcp:{port}:interface=127.0.0.1",
    ]
    with ServerProcess(
        argv, tmp_path / "app.log", cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}
    ) as proc:
        first = waitFor(lambda: readPidFile(pidfile), 20, what="ready")
        assert echo(port) == b"hello\n"
        proc.send(signal.SIGHUP)
        second, _, _ = waitForUpgrade(pidfile, first, timeout=30)
        proc.track(second)
        assert echo(port) == b"hello\n"
        assert proc.waitExit(10) == 0
        os.kill(second, signal.SIGQUIT)
        if SUBREAPER:
            assert reap(second, 30) == 0
        waitFor(lambda: not pidAlive(second), 30, what="exit")
        assert not pidfile.exists()
