"""
supervisord for real (Debian's C{supervisor}, unpacked by C{.ci/real-env}), started
by the test with its own config and socket in a tmp dir.  Under C{txflip run} the
program stays RUNNING with one pid through upgrades, and C{supervisorctl stop}
drains; direct mode is not supported there: the first upgrade makes supervisord see
its child exit (EXITED) while the orphaned successor serves outside its control.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, twistdCommand, txflipScript
from tests.harness import canConnect, freePort, killedAtEnd, waitFor
from tests.realsystemd import TOOLS, require

pytestmark = pytest.mark.slow

DIST = TOOLS / "usr/lib/python3/dist-packages"


class Supervisord:
    def __init__(self, tmp: Path, command: str) -> None:
        self.conf = tmp / "supervisord.conf"
        self.conf.write_text(
            f"[unix_http_server]\nfile={tmp}/supervisor.sock\n"
            f"[supervisord]\nlogfile={tmp}/supervisord.log\npidfile={tmp}/sd.pid\n"
            "nodaemon=true\nuser=root\n"
            "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory ="
            " supervisor.rpcinterface:make_main_rpcinterface\n"
            f"[supervisorctl]\nserverurl=unix://{tmp}/supervisor.sock\n"
            f"[program:flipecho]\ncommand={command}\ndirectory={tmp}\n"
            "stopsignal=TERM\nstopwaitsecs=40\nstartsecs=1\n"
            f'environment=PYTHONPATH="{ROOT}"\n'
            f"stdout_logfile={tmp}/flipecho.log\nredirect_stderr=true\n"
        )
        self.env = {**os.environ, "PYTHONPATH": str(DIST)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from supervisor.supervisord import main; main()",
             "-c", str(self.conf)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def ctl(self, *args: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", "from supervisor.supervisorctl import main; main()",
             "-c", str(self.conf), *args],
            env=self.env, capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip

    def state(self) -> tuple[str, int | None]:
        out = self.ctl("status", "flipecho")
        match = re.search(r"flipecho\s+(\w+)(?:\s+pid (\d+))?", out)
        assert match, out
        return match.group(1), int(match.group(2)) if match.group(2) else None

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


@pytest.fixture
def supervisord(tmp_path: Path) -> Iterator[object]:
    require("usr/lib/python3/dist-packages/supervisor/supervisord.py")
    started: list[Supervisord] = []

    def start(command: str) -> Supervisord:
        started.append(Supervisord(tmp_path, command))
        return started[-1]

    yield start
    for s in started:
        s.close()


def test_txflipRunStaysRunningWithOnePid(supervisord, tmp_path: Path) -> None:
    port = freePort()
    control = tmp_path / "control.sock"
    txflip = txflipScript()
    sd = supervisord(
        f"{txflip} run --control {control} -- {' '.join(twistdCommand())} -n"
        f" --pidfile= flipecho --listen tcp:{port}:interface=127.0.0.1"
    )
    waitFor(lambda: canConnect("127.0.0.1", port), 30, what="flipecho to listen")
    waitFor(lambda: sd.state()[0] == "RUNNING", 30, what="RUNNING")
    pid = sd.state()[1]
    for _ in range(3):
        upgraded = subprocess.run(
            [str(txflip), "upgrade", "--control", str(control)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert upgraded.returncode == 0, upgraded.stderr
        assert sd.state() == ("RUNNING", pid)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"in flight")
        stopping = subprocess.Popen(
            [sys.executable, "-c", "from supervisor.supervisorctl import main; main()",
             "-c", str(sd.conf), "stop", "flipecho"],
            env=sd.env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        with killedAtEnd(stopping):
            waitFor(
                lambda: not canConnect("127.0.0.1", port), 30, what="to stop accepting"
            )
            s.sendall(b" request\n")
            assert s.recv(100) == b"in flight request\n"
            assert stopping.wait(60) == 0
    assert sd.state()[0] == "STOPPED"
    assert not Path(f"/proc/{pid}").exists()
