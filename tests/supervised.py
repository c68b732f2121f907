"""
A C{txflip run} supervisor under test: started as a real process in its own
session, driven through its control socket and signals, and cleaned up by pid
(the supervisor, every worker it ever reported, and its process group).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.harness import ServerProcess, pidAlive, readPidFile, waitFor

ROOT = Path(__file__).resolve().parent.parent
FLIPECHO = ["-n", "flipecho", "--listen", "tcp:0:interface=127.0.0.1"]


def txflip(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """
    Run the C{txflip} command (this checkout's) to completion.
    """
    return subprocess.run(
        [sys.executable, "-m", "txflip", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
    )


class Supervised:
    """
    C{txflip run OPTIONS -- COMMAND} in directory C{tmp}, with a pid file
    (C{run.pid}) and a control socket (C{ctl}).
    """

    def __init__(
        self,
        tmp: Path,
        command: list[str],
        *options: str,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
        pidNamespace: bool = False,
        errors: bool = False,
    ) -> None:
        """
        @param prefix: what runs the supervisor (C{unshare ...}, a limit).
        @param pidNamespace: C{prefix} gives it a PID namespace of its own: the
            pids it reports are that namespace's, not ours (its worker 2 is our
            kthreadd), so none is tracked; killing its session ends them all.
        @param errors: its stderr goes to C{run.err} (L{errors}), not the log.
        """
        self.pidNamespace = pidNamespace
        self.dir = tmp
        self.pidfile = tmp / "run.pid"
        self.control = tmp / "ctl"
        self.log = tmp / "run.log"
        #: Its stderr, if apart from the log.
        self.errors = tmp / "run.err" if errors else None
        argv = [
            *(prefix or []),
            sys.executable,
            "-m",
            "txflip",
            "run",
            "--pidfile",
            str(self.pidfile),
            "--control",
            str(self.control),
            *options,
            "--",
            *command,
        ]
        fullEnv = {"PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = ServerProcess(
            argv, self.log, cwd=tmp, env=fullEnv, errors=self.errors
        )
        self.seen: set[int] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logText(self) -> str:
        return self.proc.logText()

    def status(self) -> dict[str, Any]:
        result = txflip("status", "--control", str(self.control), "--json")
        assert result.returncode == 0, result.stderr
        status: dict[str, Any] = json.loads(result.stdout)
        for worker in status["workers"]:
            self.track(worker["pid"])
        return status

    def track(self, pid: int) -> None:
        if self.pidNamespace:
            return
        self.seen.add(pid)
        self.proc.track(pid)

    def ready(self) -> list[int]:
        """
        The ready workers' pids, once the supervisor serves and the wanted number of
        workers are ready (and no other is still around).
        """
        try:
            status = self.status()
        except (AssertionError, ValueError):
            return []
        workers = status["workers"]
        pids = [w["pid"] for w in workers if w["state"] == "ready"]
        if status["state"] != "serving" or len(pids) != status["wanted"]:
            return []
        return pids if len(workers) == len(pids) else []

    def waitReady(self, timeout: float = 30.0) -> list[int]:
        return waitFor(
            self.ready, timeout, interval=0.1, what=f"ready workers: {self.tail()}"
        )

    def tail(self) -> str:
        return self.logText()[-3000:]

    @property
    def port(self) -> int:
        match = re.search(r"listening on tcp:127\.0\.0\.1:(\d+)", self.logText())
        assert match, self.tail()
        return int(match.group(1))

    def upgrade(self, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return txflip("upgrade", "--control", str(self.control), timeout=timeout)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def close(self) -> None:
        for pid in re.findall(r"started worker pid (\d+)", self.logText()):
            self.track(int(pid))
        for pid in self.seen:
            if pidAlive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.close()
        for pid in self.seen:  # our children, thanks to the subreaper
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def pidFileStays(run: Supervised) -> bool:
    return readPidFile(run.pidfile) == run.pid


def flipecho(*args: str) -> list[str]:
    from tests.conftest import twistdCommand

    return [*twistdCommand(), *FLIPECHO, *args]
