"""
End to end: real `twistd -n flipecho` processes, real signals, real sockets.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import statistics
from pathlib import Path

import pytest

from tests.conftest import SUBREAPER, echo, trafficFlows
from tests.harness import Load, pidAlive, readPidFile, reap, waitFor, waitForUpgrade

UPGRADES = 10


@pytest.mark.slow
def test_upgradesUnderLoadLoseNothing(flip) -> None:
    """
    Short-lived and lock-step long-lived clients run through 10 upgrades: no refused
    or reset connection, no wrong echo, no lost message; the pid file follows the
    serving process; one process is left; SIGQUIT exits 0 and removes the pid file.
    """
    server = flip()
    port = server.port
    toNew, toGone = [], []
    with Load("127.0.0.1", port, short=4, long=4) as load:
        waitFor(lambda: load.stats.exchanges > 50, 10, what="load to start")
        for _ in range(UPGRADES):
            old = server.serving()
            before = load.stats.exchanges
            os.kill(old, signal.SIGHUP)
            new, tNew, tGone = waitForUpgrade(server.pidfile, old, timeout=30)
            server.track(new)
            toNew.append(tNew)
            toGone.append(tGone)
            assert server.alive() == [new]
            trafficFlows(load, since=before)
    short, long = load.shortStats, load.longStats
    print(
        f"\nshort: {short}\nlong: {long}\n"
        f"SIGHUP->new ready: median {statistics.median(toNew) * 1000:.0f} ms,"
        f" max {max(toNew) * 1000:.0f} ms; SIGHUP->old gone: median"
        f" {statistics.median(toGone) * 1000:.0f} ms, max {max(toGone) * 1000:.0f} ms"
    )
    assert short.errorsTotal() == 0, short
    assert long.errorsTotal() == 0, long
    assert long.lost == 0, long
    assert short.connections > 100 and long.exchanges > 100
    # Every upgrade moved the long-lived connections to the new generation: none
    # was closed (test_move_upgrades.py has the details).
    assert long.closedByServer == 0

    final = server.serving()
    logText = server.logText()
    assert f"[pid {final}]" in logText
    for step in (
        "started generation",
        "is ready; this process will exit",
        "stopped listening",
        "draining",
        "finished",
    ):
        assert step in logText, step
    os.kill(final, signal.SIGQUIT)
    if SUBREAPER:
        assert reap(final, 30) == 0
    else:
        waitFor(lambda: not pidAlive(final), 30, what="final exit")
    assert not server.pidfile.exists()
    assert server.alive() == []


def test_sigquitAndSigtermStopGracefully(flip) -> None:
    server = flip()
    pid = server.serving()
    assert echo(server.port) == b"hello\n"
    server.proc.send(signal.SIGQUIT)
    assert server.proc.waitExit(20) == 0
    assert not server.pidfile.exists()
    assert not pidAlive(pid)


def test_failedChildKeepsParentServing(flip, tmp_path: Path) -> None:
    fault = tmp_path / "fault"
    server = flip(env={"FLIPAPP_FAULT": str(fault)}, app=True)
    pid = server.serving()
    fault.write_text("exit")
    os.kill(pid, signal.SIGHUP)
    waitFor(
        lambda: "upgrade failed" in server.logText(), 20, what="the upgrade to fail"
    )
    assert "exited with status 3 before it was ready" in server.logText()
    assert server.serving() == pid
    assert echo(server.port) == b"hello\n"
    # Once the fault is gone, the next upgrade works.
    fault.unlink()
    os.kill(pid, signal.SIGHUP)
    new, _, _ = waitForUpgrade(server.pidfile, pid, timeout=30)
    server.track(new)
    assert echo(server.port) == b"hello\n"


@pytest.mark.slow
def test_hangingChildIsKilledAfterTimeout(flip, tmp_path: Path) -> None:
    fault = tmp_path / "fault"
    server = flip(
        "--upgrade-timeout", "1.5", env={"FLIPAPP_FAULT": str(fault)}, app=True
    )
    pid = server.serving()
    fault.write_text("hang")
    os.kill(pid, signal.SIGHUP)
    waitFor(lambda: "started generation 2 as pid" in server.logText(), 10, what="spawn")
    child = int(server.logText().split("started generation 2 as pid ")[1].split()[0])
    server.track(child)
    # SIGHUP while the upgrade is in progress is refused, no second child.
    os.kill(pid, signal.SIGHUP)
    waitFor(
        lambda: "upgrade refused: upgrade in progress" in server.logText(),
        10,
        what="refusal",
    )
    assert server.logText().count("started generation") == 1
    waitFor(
        lambda: "not ready within 1.5 s; killed it" in server.logText(),
        10,
        what="the timeout",
    )
    waitFor(lambda: not pidAlive(child), 10, what="the child to die")
    assert server.serving() == pid
    assert echo(server.port) == b"hello\n"


@pytest.mark.slow
def test_unixSocketAcrossUpgrades(flip, tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    server = flip("--listen", f"unix:{path}", "--listen", "tcp:0:interface=127.0.0.1")
    mode = path.stat().st_mode & 0o777

    def unixEcho() -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(path))
            s.sendall(b"over unix\n")
            return s.recv(100)

    assert unixEcho() == b"over unix\n"
    for _ in range(3):
        old = server.serving()
        os.kill(old, signal.SIGHUP)
        new, _, _ = waitForUpgrade(server.pidfile, old, timeout=30)
        server.track(new)
        assert path.exists()
        assert path.stat().st_mode & 0o777 == mode
        assert unixEcho() == b"over unix\n"
    server.signal(signal.SIGQUIT)
    waitFor(lambda: not path.exists(), 20, what="the unix path to be removed")


def test_listenersDrainTogether(flip) -> None:
    """
    Every listener's connections drain at once, within one idle grace: while an
    idle connection on the first listener holds its drain open, a connection on the
    second is already draining (its next echo comes with the close).  Draining the
    listeners one after the other took one idle grace per listener.
    """
    server = flip(
        "--no-move",
        "--idle-grace",
        "10",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        "tcp:0:interface=127.0.0.1",
    )
    first, second = (
        int(port)
        for port in re.findall(r"listening on tcp:127\.0\.0\.1:(\d+)", server.logText())
    )

    def connect(port: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"hi\n")
        assert sock.recv(100) == b"hi\n"
        return sock

    def closesWithEcho(sock: socket.socket) -> bool:
        sock.sendall(b"again\n")
        assert sock.recv(100) == b"again\n"
        sock.settimeout(1)
        try:
            return sock.recv(100) == b""
        except TimeoutError:
            return False

    idle, probe, other = connect(first), connect(first), connect(second)
    with idle, probe, other:
        old = server.serving()
        os.kill(old, signal.SIGHUP)
        new = waitFor(
            lambda: (p := readPidFile(server.pidfile)) != old and p, 30, what="ready"
        )
        server.track(new)
        # The first listener drains (its idle connection keeps it from finishing)...
        assert waitFor(lambda: closesWithEcho(probe) or None, 10, what="draining")
        # ...and the second drains at the same time.
        assert closesWithEcho(other)
        assert pidAlive(old)
