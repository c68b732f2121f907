"""
End to end: an upgrade that fails while spawning (no child process at all) is
logged with its reason, like every other failed upgrade, and the old generation
serves on.  Seen for real: a release directory removed under a running service
made every later upgrade fail with nothing in the log but "SIGHUP: upgrading".
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from tests.conftest import ROOT, echo, twistdCommand
from tests.harness import ServerProcess, pidAlive, readPidFile, waitFor


def test_removedWorkingDirectoryFailsTheUpgradeLoudly(tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.mkdir()
    pidFile, log = tmp_path / "twistd.pid", tmp_path / "server.log"
    argv = [
        *twistdCommand(),
        "-n",
        f"--pidfile={pidFile}",
        "flipecho",
        "--listen",
        "tcp:0:interface=127.0.0.1",
    ]
    env = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")}
    with ServerProcess(argv, log, cwd=release, env=env) as server:
        pid = waitFor(
            lambda: (p := readPidFile(pidFile)) and pidAlive(p) and p,
            20,
            what="a ready server",
        )
        port = int(server.logText().split("listening on tcp:127.0.0.1:")[1].split()[0])
        shutil.rmtree(release)
        os.kill(pid, signal.SIGHUP)
        try:
            waitFor(lambda: "upgrade failed" in server.logText(), 10, what="the log")
        except AssertionError:
            raise AssertionError(server.logText()[-2000:]) from None
        text = server.logText()
        assert "cannot start the next generation: " in text, text
        assert f"still serving (pid {pid})" in text
        assert echo(port) == b"hello\n"
        assert readPidFile(pidFile) == pid
        os.kill(pid, signal.SIGTERM)
        server.waitExit(20)  # twistd ends by the signal that stopped it
