"""
Fixtures for end-to-end tests: real twistd processes on 127.0.0.1.

The test process makes itself a child subreaper (Linux), so that every generation
of a server -- each the child of the previous one, orphaned when it exits -- becomes
our child: we can collect its exit status and no zombie is left behind.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ServerProcess, pidAlive, readPidFile, waitFor

ROOT = Path(__file__).resolve().parent.parent
PR_SET_CHILD_SUBREAPER = 36


def _becomeSubreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


SUBREAPER = _becomeSubreaper()


def reap(pid: int, timeout: float) -> int | None:
    """
    Wait for C{pid} (one of our children, thanks to the subreaper) to exit; return
    its exit status as C{subprocess} does (negative for a signal), or None if it is
    not our child.
    """
    result: list[int] = []

    def exited() -> bool:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            result.append(-999)
            return True
        if got == pid:
            result.append(os.waitstatus_to_exitcode(status))
            return True
        return False

    waitFor(exited, timeout, what=f"pid {pid} to exit")
    return None if result[0] == -999 else result[0]


def twistdCommand() -> list[str]:
    twistd = shutil.which("twistd", path=os.path.dirname(sys.executable))
    assert twistd, "twistd is not installed next to the test interpreter"
    return [sys.executable, twistd]


class Flip:
    """
    One flipecho service under test: its first process, pid file, log and port.
    """

    def __init__(self, tmp: Path, argv: list[str], env: dict[str, str] | None) -> None:
        self.dir = tmp
        self.pidfile = tmp / "twistd.pid"
        self.log = tmp / "server.log"
        fullEnv = {"PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = ServerProcess(argv, self.log, cwd=tmp, env=fullEnv)
        self.pids: list[int] = []

    def waitReady(self, timeout: float = 20.0) -> int:
        pid = waitFor(
            lambda: (p := readPidFile(self.pidfile)) and pidAlive(p) and p,
            timeout,
            what=f"a ready server (log: {self.logText()[-2000:]})",
        )
        self.track(pid)
        return pid

    def track(self, pid: int) -> None:
        if pid not in self.pids:
            self.pids.append(pid)
        self.proc.track(pid)

    @property
    def port(self) -> int:
        match = re.search(r"listening on tcp:127\.0\.0\.1:(\d+)", self.logText())
        assert match, self.logText()
        return int(match.group(1))

    def logText(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def serving(self) -> int:
        pid = readPidFile(self.pidfile)
        assert pid is not None
        return pid

    def signal(self, sig: int) -> None:
        os.kill(self.serving(), sig)

    def alive(self) -> list[int]:
        return [pid for pid in self.pids if pidAlive(pid)]


@pytest.fixture
def fault(tmp_path: Path) -> Path:
    """
    The file flipapp reads its fault from (absent: no fault).
    """
    return tmp_path / "fault"


@pytest.fixture
def flip(tmp_path: Path) -> Iterator[object]:
    """
    Start flipecho: C{flip(*args, env=..., app=False, twistd=(...))} -> a ready
    L{Flip}; C{twistd} are twistd's own options (C{--logfile=PATH}: the log read).  Every
    process it starts is killed (by pid) at the end of the test.
    """
    started: list[Flip] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        app: bool = False,
        twistd: tuple[str, ...] = (),
    ) -> Flip:
        if app:
            argv = [sys.executable, str(ROOT / "tests" / "flipapp.py")]
        else:
            argv = twistdCommand()
        argv += ["-n", *twistd, "flipecho", *args]
        if not any(a.startswith("--listen") for a in args):
            argv += ["--listen", "tcp:0:interface=127.0.0.1"]
        server = Flip(tmp_path, argv, env)
        for arg in twistd:
            if arg.startswith("--logfile="):
                # The log is there; stdout gets only what precedes logging.
                server.log = Path(arg.partition("=")[2])
        started.append(server)
        server.track(server.proc.pid)
        server.waitReady()
        return server

    yield start
    for server in started:
        for pid in server.alive():
            os.kill(pid, signal.SIGKILL)
        server.proc.close()
        for pid in server.pids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
