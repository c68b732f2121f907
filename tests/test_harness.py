"""Self-tests for tests/harness.py against plain stdlib servers.

They prove the harness reports zero errors when nothing goes wrong *and*
reports errors when the server misbehaves, so a green upgrade test means
something.  No txflip or Twisted needed.
"""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    Load,
    LongClients,
    ServerProcess,
    ShortClients,
    Stats,
    freePort,
    killedAtEnd,
    pidAlive,
    readPidFile,
    waitFor,
    waitForUpgrade,
)

HOST = "127.0.0.1"


class _Handler(socketserver.StreamRequestHandler):
    server: LineServer

    def handle(self) -> None:
        self.server.track(self.connection)
        try:
            for line in self.rfile:
                mode = self.server.mode
                if mode == "swallow":  # read the line, close without echo
                    return
                self.wfile.write(line.upper() if mode == "wrong" else line)
                if mode == "once":  # clean close right after a full echo
                    return
        except OSError:
            pass
        finally:
            self.server.untrack(self.connection)


class LineServer(socketserver.ThreadingTCPServer):
    """Threaded line server; ``mode`` selects how it (mis)behaves."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mode: str = "echo") -> None:
        super().__init__((HOST, 0), _Handler)
        self.mode = mode
        self.port: int = self.server_address[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.add(sock)

    def untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)

    def kill(self) -> None:
        """Stop listening and cut every open connection: simulated downtime."""
        self.shutdown()
        self.server_close()
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)


@pytest.fixture
def lineServer(request: pytest.FixtureRequest) -> Iterator[LineServer]:
    server = LineServer(getattr(request, "param", "echo"))
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.slow
def test_loadAgainstHealthyServerHasNoErrors(lineServer: LineServer) -> None:
    with Load(HOST, lineServer.port, short=4, long=4) as load:
        time.sleep(1.0)  # the load duration itself, not a wait for state
    stats = load.stats
    assert stats.errorsTotal() == 0, str(stats)
    assert stats.lost == 0, str(stats)
    assert load.shortStats.exchanges > 0, str(load.shortStats)
    assert load.longStats.exchanges > 0, str(load.longStats)
    assert stats.exchanges == load.shortStats.exchanges + load.longStats.exchanges
    assert load.longStats.connections == 4


def test_loadDetectsDowntime(lineServer: LineServer) -> None:
    with Load(HOST, lineServer.port, short=2, long=2) as load:
        waitFor(lambda: load.longStats.exchanges > 20, 5, what="load flowing")
        assert load.stats.errorsTotal() == 0, str(load.stats)
        lineServer.kill()
        waitFor(
            lambda: (
                load.shortStats.count("refused") > 0
                and load.longStats.count("refused") > 0
            ),
            5,
            what="refused connects",
        )
    assert load.stats.errorsTotal() > 0
    assert "refused=" in str(load.stats)


@pytest.mark.parametrize("lineServer", ["swallow"], indirect=True)
def test_unansweredLinesCountAsLost(lineServer: LineServer) -> None:
    with Load(HOST, lineServer.port, short=1, long=1) as load:
        waitFor(lambda: load.longStats.lost >= 3, 5, what="lost long lines")
        waitFor(lambda: load.shortStats.lost >= 3, 5, what="lost short lines")
    stats = load.stats
    assert stats.exchanges == 0
    assert stats.count("short_read") >= stats.lost > 0, str(stats)


@pytest.mark.parametrize("lineServer", ["once"], indirect=True)
def test_cleanCloseAfterEchoIsNotAnError(lineServer: LineServer) -> None:
    # A generous interval so the server's close lands while the client idles.
    with LongClients(HOST, lineServer.port, 2, interval=0.05) as clients:
        waitFor(lambda: clients.stats.closedByServer >= 5, 5, what="server closes")
    stats = clients.stats
    assert stats.errorsTotal() == 0, str(stats)
    assert stats.connections > stats.closedByServer - 2


@pytest.mark.parametrize("lineServer", ["wrong"], indirect=True)
def test_wrongEchoDetected(lineServer: LineServer) -> None:
    with ShortClients(HOST, lineServer.port, 1) as clients:
        waitFor(lambda: clients.stats.count("wrong_echo") >= 3, 5, what="wrong echoes")
    assert clients.stats.lost == 0
    assert "wrong_echo: sent b's0-1\\n' got b'S0-1\\n'" in str(clients.stats)


@pytest.mark.slow
def test_stopIsPromptWhenServerHangs() -> None:
    # A listener that never accepts: connects succeed, echoes never come.
    with socket.create_server((HOST, 0)) as listener:
        port = listener.getsockname()[1]
        clients = LongClients(HOST, port, 2, timeout=0.5)
        clients.start()
        waitFor(lambda: clients.stats.count("timeout") >= 2, 5, what="echo timeouts")
        t0 = time.monotonic()
        clients.stop()
        assert clients.join(5)
        assert time.monotonic() - t0 < 2
    assert clients.stats.lost == clients.stats.count("timeout")


def test_refusedWhenNothingListens() -> None:
    with ShortClients(HOST, freePort(), 1) as clients:
        waitFor(lambda: clients.stats.count("refused") > 0, 5, what="refused")
    assert clients.stats.connections == 0
    assert clients.stats.lost == 0


def test_statsAddAndStr() -> None:
    a, b = Stats(), Stats()
    a.add("exchanges", 3)
    b.error("reset", "boom", lost=True)
    total = a + b
    assert (total.exchanges, total.count("reset"), total.lost) == (3, 1, 1)
    assert total.errorsTotal() == 1
    assert "reset=1" in str(total) and "boom" in str(total)


def test_waitFor() -> None:
    values = iter([0, None, 7])
    assert waitFor(lambda: next(values), 1, interval=0.001) == 7
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0.1s waiting for X"):
        waitFor(lambda: False, 0.1, what="X")
    assert time.monotonic() - t0 < 1


def test_readPidfile(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    assert readPidFile(path) is None
    for garbage in ["", "  \n", "abc", "-5", "0"]:
        path.write_text(garbage)
        assert readPidFile(path) is None
    path.write_text("1234\n")
    assert readPidFile(path) == 1234


def test_pidAliveTreatsZombiesAsDead() -> None:
    assert pidAlive(os.getpid())
    assert not pidAlive(0)
    assert not pidAlive(-1)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        waitFor(lambda: not pidAlive(child.pid), 5, what="child to exit")
        assert os.path.exists(f"/proc/{child.pid}")  # still an unreaped zombie
    finally:
        child.wait(5)
    assert not pidAlive(child.pid)


# A fake upgradable server: writes its pid to the pidfile; on SIGHUP spawns a
# new generation (which writes the pidfile) and exits shortly after.
FAKE_SERVER = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    pidfile = sys.argv[1]
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(pidfile + ".tmp", pidfile)
    print("generation", os.getpid(), flush=True)
    upgrade = []
    signal.signal(signal.SIGHUP, lambda *a: upgrade.append(1))
    deadline = time.monotonic() + 30  # never outlive a broken test for long
    while not upgrade and time.monotonic() < deadline:
        time.sleep(0.01)
    # Own session: only ServerProcess.track() can clean this one up.
    subprocess.Popen([sys.executable] + sys.argv, start_new_session=True)
    time.sleep(0.2)
    print("old generation exiting", flush=True)
    """
)


def test_serverProcessUpgradeAndCleanup(tmp_path: Path) -> None:
    script = tmp_path / "fake.py"
    script.write_text(FAKE_SERVER)
    pidfile = tmp_path / "server.pid"
    log = tmp_path / "server.log"
    log.write_text("previous run\n")
    with ServerProcess([sys.executable, script, pidfile], log) as srv:
        waitFor(lambda: readPidFile(pidfile) == srv.pid, 10, what="pidfile")
        srv.send(signal.SIGHUP)
        newPid, tNew, tOld = waitForUpgrade(pidfile, srv.pid, 10)
        srv.track(newPid)
        assert newPid != srv.pid and pidAlive(newPid)
        assert 0 <= tNew <= tOld < 10
        assert srv.waitExit(5) == 0
        assert not pidAlive(srv.pid)
        waitFor(lambda: "old generation exiting" in srv.logText(), 5, what="log")
        assert "previous run" not in srv.logText()
        assert f"generation {newPid}" in srv.logText()
    # The new generation is not our child; the context manager killed it.
    waitFor(lambda: not pidAlive(newPid), 5, what="tracked pid killed")


def test_serverProcessKillsOnExitAndWaitExitTimesOut(
    tmp_path: Path,
) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    with ServerProcess(argv, tmp_path / "log", env={"X": "1"}) as srv:
        with pytest.raises(AssertionError, match=r"did not exit within 0\.1s"):
            srv.waitExit(0.1)
        pid = srv.pid
    assert srv.poll() == -signal.SIGKILL
    assert not pidAlive(pid)


def test_killedAtEndKillsAndReapsWhenTheBlockFails() -> None:
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    with (
        pytest.raises(RuntimeError, match="the test failed"),
        killedAtEnd(running, done),
    ):
        raise RuntimeError("the test failed")
    assert running.returncode == -signal.SIGKILL
    assert done.returncode == 0


def test_freePortIsBindable() -> None:
    port = freePort()
    with socket.create_server((HOST, port)):
        pass
