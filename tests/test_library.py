"""
End to end: txflip as a library in a plain Twisted program (no twistd).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from conftest import ROOT, SUBREAPER, reap
from harness import (
    ServerProcess,
    free_port,
    pid_alive,
    read_pidfile,
    wait_for,
    wait_for_upgrade,
)
from test_flipecho import echo


def test_plain_program_upgrades_on_sighup(tmp_path: Path) -> None:
    pidfile = tmp_path / "app.pid"
    port = free_port()
    argv = [
        sys.executable,
        str(ROOT / "tests" / "plainapp.py"),
        str(pidfile),
        f"tcp:{port}:interface=127.0.0.1",
    ]
    with ServerProcess(
        argv, tmp_path / "app.log", cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}
    ) as proc:
        first = wait_for(lambda: read_pidfile(pidfile), 20, what="ready")
        assert echo(port) == b"hello\n"
        proc.send(signal.SIGHUP)
        second, _, _ = wait_for_upgrade(pidfile, first, timeout=30)
        proc.track(second)
        assert echo(port) == b"hello\n"
        assert proc.wait_exit(10) == 0
        os.kill(second, signal.SIGQUIT)
        if SUBREAPER:
            assert reap(second, 30) == 0
        wait_for(lambda: not pid_alive(second), 30, what="exit")
        assert not pidfile.exists()
