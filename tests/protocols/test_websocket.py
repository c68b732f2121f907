"""
End to end: twisted.web with Autobahn's WebSocketResource behind C{flip:}, driven by
real WebSocket clients (the C{websockets} library).  Autobahn swaps the transport's
protocol when a request upgrades to WebSocket: txflip must still see each
connection end (it follows the transport), and a generation exits at its drain
deadline whatever it believes is still open.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.conftest import ROOT
from tests.harness import ServerProcess, pidAlive, readPidFile, waitFor


class WebSocketApp:
    def __init__(self, tmp: Path, idleGrace: float, drainTimeout: float) -> None:
        self.pidfile = tmp / "ws.pid"
        description = (
            f"flip:tcp:0:interface=127.0.0.1:pidfile={self.pidfile}"
            f":idleGrace={idleGrace:g}:drainTimeout={drainTimeout:g}"
        )
        argv = [sys.executable, str(ROOT / "tests" / "wsapp.py"), description]
        self.proc = ServerProcess(
            argv, tmp / "ws.log", cwd=tmp, env={"PYTHONPATH": str(ROOT)}
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
    def url(self) -> str:
        match = re.search(r"listening on tcp:127\.0\.0\.1:(\d+)", self.proc.logText())
        assert match, self.proc.logText()
        return f"ws://127.0.0.1:{match.group(1)}/ws"

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


@pytest.fixture
def wsapp(tmp_path: Path) -> Iterator[object]:
    started: list[WebSocketApp] = []

    def start(idleGrace: float = 1.0, drainTimeout: float = 30.0) -> WebSocketApp:
        app = WebSocketApp(tmp_path, idleGrace, drainTimeout)
        started.append(app)
        return app

    yield start
    for app in started:
        app.proc.close()


def test_closedWebSocketsLetTheOldGenerationExit(wsapp) -> None:
    """
    Clients that connected and closed do not hold the old generation: it exits
    within the idle grace of the upgrade (not at the drain timeout), and the next
    upgrade is accepted.
    """
    app = wsapp(idleGrace=1.0, drainTimeout=30.0)
    first = app.serving()
    for n in range(5):
        with connect(app.url, open_timeout=5) as client:
            client.send(f"hello {n}")
            assert client.recv(timeout=5) == f"hello {n}"
    os.kill(first, signal.SIGHUP)
    second = app.serving(other=first)
    assert app.exits(first, 10) < 4.0
    os.kill(second, signal.SIGHUP)
    third = app.serving(other=second)
    assert app.exits(second, 10) < 4.0
    with connect(app.url, open_timeout=5) as client:
        client.send("again")
        assert client.recv(timeout=5) == "again"
    assert pidAlive(third)
    assert "previous generation hasn't exited" not in app.proc.logText()


def test_theOldGenerationExitsAtItsDrainDeadline(wsapp) -> None:
    """
    A WebSocket that never ends is aborted at the drain timeout, and the old
    generation exits right then.
    """
    app = wsapp(idleGrace=0.5, drainTimeout=3.0)
    first = app.serving()
    with connect(app.url, open_timeout=5) as client:
        client.send("stay")
        assert client.recv(timeout=5) == "stay"
        os.kill(first, signal.SIGHUP)
        app.serving(other=first)
        took = app.exits(first, 20)
    assert took < 3.0 + 2.0, took
    assert "drain timeout: aborting 1 connections" in app.proc.logText()
