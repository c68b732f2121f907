"""
Test applications behind a C{flip:} endpoint, as processes the protocol tests
drive: tests/wsapp.py (Autobahn) and tests/streamapp.py (twisted.web: a page, an
SSE stream, a slow answer, its pid), over C{flip:tcp} or C{flip:ssl}.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

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


class Talk:
    """
    What one client of L{talk} sent, had echoed, and how its connection ended.

    @ivar code: the close code the server sent (L{None}: the server did not
        close).
    """

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.echoed: list[str | bytes] = []
        self.code: int | None = None
        self.sentClose = False
        self.extensions: list[object] = []


def talk(
    url: str,
    name: str,
    started: threading.Barrier,
    stop: threading.Event | None = None,
    compression: str | None = "deflate",
) -> Talk:
    """
    One lock-step client: send a message, wait for its echo, pause 20 ms, until
    the server closes (or, with C{stop}, until it is set: then close).  It
    offers permessage-deflate, as C{websockets} does by default, unless
    C{compression} is L{None}.
    """
    talk = Talk()
    with connect(url, open_timeout=10, compression=compression) as client:
        talk.extensions = list(client.protocol.extensions)
        started.wait(20)
        try:
            while stop is None or not stop.is_set():
                message = f"{name} {len(talk.sent)}"
                client.send(message)
                talk.sent.append(message)
                talk.echoed.append(client.recv(timeout=10))
                time.sleep(0.02)
        except ConnectionClosed as closed:
            talk.code = closed.rcvd.code if closed.rcvd is not None else None
            talk.sentClose = closed.sent is not None
    return talk
