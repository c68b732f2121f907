"""
Test applications behind a C{flip:} endpoint, as processes the protocol tests
drive: tests/wsapp.py (Autobahn) and tests/streamapp.py (twisted.web: a page, an
SSE stream, a slow answer, its pid), over C{flip:tcp} or C{flip:ssl}.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, selfSigned
from tests.harness import ServerProcess, pidAlive, readPidFile, waitFor


class FlipApp:
    """
    One of the test applications, started with a C{flip:} description.
    """

    def __init__(
        self,
        tmp: Path,
        script: str,
        idleGrace: float,
        drainTimeout: float,
        tls: bool = False,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.pidfile = tmp / f"{script}.pid"
        self.tls = tls
        settings = (
            f"interface=127.0.0.1:pidfile={self.pidfile}"
            f":idleGrace={idleGrace:g}:drainTimeout={drainTimeout:g}"
        )
        if tls:
            key, cert = selfSigned(tmp)
            description = f"flip:ssl:0:{settings}:privateKey={key}:certKey={cert}"
        else:
            description = f"flip:tcp:0:{settings}"
        argv = [sys.executable, str(ROOT / "tests" / f"{script}.py"), description]
        self.proc = ServerProcess(
            [*argv, *extra],
            tmp / f"{script}.log",
            cwd=tmp,
            env={"PYTHONPATH": str(ROOT)},
        )

    def serving(self, other: int | None = None) -> int:
        """
        The pid that serves, once it is not C{other}.
        """
        pid = waitFor(
            lambda: (
                (p := readPidFile(self.pidfile)) and p != other and pidAlive(p) and p
            ),
            20,
            what=f"a ready generation; log: {self.proc.logText()[-2000:]}",
        )
        self.proc.track(pid)
        return pid

    @property
    def port(self) -> int:
        match = re.search(r"listening on tcp:127\.0\.0\.1:(\d+)", self.proc.logText())
        assert match, self.proc.logText()
        return int(match.group(1))

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """
        tests/wsapp.py's WebSocket.
        """
        return f"ws://127.0.0.1:{self.port}/ws"

    def exits(self, pid: int, within: float) -> float:
        """
        Wait for C{pid} to exit; how long it took.
        """
        started = time.monotonic()
        try:
            waitFor(lambda: not pidAlive(pid), within, what=f"pid {pid} to exit")
        except AssertionError:
            raise AssertionError(self.proc.logText()[-3000:]) from None
        return time.monotonic() - started
