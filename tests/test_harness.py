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
from harness import (
    Load,
    LongClients,
    ServerProcess,
    ShortClients,
    Stats,
    free_port,
    pid_alive,
    read_pidfile,
    wait_for,
    wait_for_upgrade,
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
def line_server(request: pytest.FixtureRequest) -> Iterator[LineServer]:
    server = LineServer(getattr(request, "param", "echo"))
    try:
        yield server
    finally:
        server.kill()


def test_load_against_healthy_server_has_no_errors(line_server: LineServer) -> None:
    with Load(HOST, line_server.port, short=4, long=4) as load:
        time.sleep(1.0)  # the load duration itself, not a wait for state
    stats = load.stats
    assert stats.errors_total() == 0, str(stats)
    assert stats.lost == 0, str(stats)
    assert load.short_stats.exchanges > 0, str(load.short_stats)
    assert load.long_stats.exchanges > 0, str(load.long_stats)
    assert stats.exchanges == load.short_stats.exchanges + load.long_stats.exchanges
    assert load.long_stats.connections == 4


def test_load_detects_downtime(line_server: LineServer) -> None:
    with Load(HOST, line_server.port, short=2, long=2) as load:
        wait_for(lambda: load.long_stats.exchanges > 20, 5, what="load flowing")
        assert load.stats.errors_total() == 0, str(load.stats)
        line_server.kill()
        wait_for(
            lambda: load.short_stats.refused > 0 and load.long_stats.refused > 0,
            5,
            what="refused connects",
        )
    assert load.stats.errors_total() > 0
    assert "refused=" in str(load.stats)


@pytest.mark.parametrize("line_server", ["swallow"], indirect=True)
def test_unanswered_lines_count_as_lost(line_server: LineServer) -> None:
    with Load(HOST, line_server.port, short=1, long=1) as load:
        wait_for(lambda: load.long_stats.lost >= 3, 5, what="lost long lines")
        wait_for(lambda: load.short_stats.lost >= 3, 5, what="lost short lines")
    stats = load.stats
    assert stats.exchanges == 0
    assert stats.short_read >= stats.lost > 0, str(stats)


@pytest.mark.parametrize("line_server", ["once"], indirect=True)
def test_clean_close_after_echo_is_not_an_error(line_server: LineServer) -> None:
    # A generous interval so the server's close lands while the client idles.
    with LongClients(HOST, line_server.port, 2, interval=0.05) as clients:
        wait_for(lambda: clients.stats.closed_by_server >= 5, 5, what="server closes")
    stats = clients.stats
    assert stats.errors_total() == 0, str(stats)
    assert stats.connections > stats.closed_by_server - 2


@pytest.mark.parametrize("line_server", ["wrong"], indirect=True)
def test_wrong_echo_detected(line_server: LineServer) -> None:
    with ShortClients(HOST, line_server.port, 1) as clients:
        wait_for(lambda: clients.stats.wrong_echo >= 3, 5, what="wrong echoes")
    assert clients.stats.lost == 0
    assert "wrong_echo: sent b's0-1\\n' got b'S0-1\\n'" in str(clients.stats)


def test_stop_is_prompt_when_server_hangs() -> None:
    # A listener that never accepts: connects succeed, echoes never come.
    with socket.create_server((HOST, 0)) as listener:
        port = listener.getsockname()[1]
        clients = LongClients(HOST, port, 2, timeout=0.5)
        clients.start()
        wait_for(lambda: clients.stats.timeout >= 2, 5, what="echo timeouts")
        t0 = time.monotonic()
        clients.stop()
        assert clients.join(5)
        assert time.monotonic() - t0 < 2
    assert clients.stats.lost == clients.stats.timeout


def test_refused_when_nothing_listens() -> None:
    with ShortClients(HOST, free_port(), 1) as clients:
        wait_for(lambda: clients.stats.refused > 0, 5, what="refused")
    assert clients.stats.connections == 0
    assert clients.stats.lost == 0


def test_stats_add_and_str() -> None:
    a, b = Stats(), Stats()
    a.add("exchanges", 3)
    b.error("reset", "boom", lost=True)
    total = a + b
    assert (total.exchanges, total.reset, total.lost) == (3, 1, 1)
    assert total.errors_total() == 1
    assert "reset=1" in str(total) and "boom" in str(total)


def test_wait_for() -> None:
    values = iter([0, None, 7])
    assert wait_for(lambda: next(values), 1, interval=0.001) == 7
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0.1s waiting for X"):
        wait_for(lambda: False, 0.1, what="X")
    assert time.monotonic() - t0 < 1


def test_read_pidfile(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    assert read_pidfile(path) is None
    for garbage in ["", "  \n", "abc", "-5", "0"]:
        path.write_text(garbage)
        assert read_pidfile(path) is None
    path.write_text("1234\n")
    assert read_pidfile(path) == 1234


def test_pid_alive_treats_zombies_as_dead() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(0)
    assert not pid_alive(-1)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_for(lambda: not pid_alive(child.pid), 5, what="child to exit")
        assert os.path.exists(f"/proc/{child.pid}")  # still an unreaped zombie
    finally:
        child.wait(5)
    assert not pid_alive(child.pid)


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


def test_server_process_upgrade_and_cleanup(tmp_path: Path) -> None:
    script = tmp_path / "fake.py"
    script.write_text(FAKE_SERVER)
    pidfile = tmp_path / "server.pid"
    log = tmp_path / "server.log"
    log.write_text("previous run\n")
    with ServerProcess([sys.executable, script, pidfile], log) as srv:
        wait_for(lambda: read_pidfile(pidfile) == srv.pid, 10, what="pidfile")
        srv.send(signal.SIGHUP)
        new_pid, t_new, t_old = wait_for_upgrade(pidfile, srv.pid, 10)
        srv.track(new_pid)
        assert new_pid != srv.pid and pid_alive(new_pid)
        assert 0 <= t_new <= t_old < 10
        assert srv.wait_exit(5) == 0
        assert not pid_alive(srv.pid)
        wait_for(lambda: "old generation exiting" in srv.log_text(), 5, what="log")
        assert "previous run" not in srv.log_text()
        assert f"generation {new_pid}" in srv.log_text()
    # The new generation is not our child; the context manager killed it.
    wait_for(lambda: not pid_alive(new_pid), 5, what="tracked pid killed")


def test_server_process_kills_on_exit_and_wait_exit_times_out(
    tmp_path: Path,
) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    with ServerProcess(argv, tmp_path / "log", env={"X": "1"}) as srv:
        with pytest.raises(AssertionError, match="did not exit within 0.1s"):
            srv.wait_exit(0.1)
        pid = srv.pid
    assert srv.poll() == -signal.SIGKILL
    assert not pid_alive(pid)


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.create_server((HOST, port)):
        pass
