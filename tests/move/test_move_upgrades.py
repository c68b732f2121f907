"""
End to end: connections move to the new generation through real upgrades of real
processes (twistd -n flipecho, twistd web with flip:, plain programs), seen by real
clients, ours and curl.
"""

from __future__ import annotations

import functools
import http.client
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PLAIN, ROOT, Flip, lines, selfSigned, twistdCommand
from tests.harness import (
    ServerProcess,
    freePort,
    killedAtEnd,
    pidAlive,
    readPidFile,
    waitFor,
)
from tests.harness import waitForUpgrade as _waitForUpgrade
from tests.talkers import Clients, Talkers, everyKind

UPGRADES = 20


def flowing(clients: Clients, before: tuple[int, int, int]) -> bool:
    """
    Whether every kind of client has made progress since C{before}.
    """
    return (
        clients.lockstep.stats.exchanges > before[0] + 20
        and clients.idle.stats.exchanges > before[1] + 5
        and clients.stream.echoed > before[2] + 20
    )


def upgrade(server: object, pidfile: Path, track: object) -> tuple[int, int]:
    """
    SIGHUP the serving generation; wait until the next one serves and the old one
    is gone.  @return: (old pid, new pid)
    """
    old = readPidFile(pidfile)
    assert old is not None
    os.kill(old, signal.SIGHUP)
    new, _, _ = _waitForUpgrade(pidfile, old, timeout=30)
    track(new)  # type: ignore[operator]
    return old, new


@pytest.mark.slow
def test_longLivedAndIdleClientsKeepTheirSocket(flip) -> None:
    """
    Through 20 upgrades: lock-step clients (each line in two writes), idle clients
    (silent for longer than the idle grace, then talking), and a client streaming
    without waiting keep their first socket (no close, no reconnect), lose nothing,
    and get every echo once, in order; a partial line sent before an upgrade is
    completed after it.  The old generations exit without waiting an idle grace.
    """
    server = flip("--idle-grace", "5")
    port = server.port
    partial = socket.create_connection(("127.0.0.1", port), timeout=10)
    with everyKind(port, lockstep=8, idle=40, seed=2) as clients:
        partial.sendall(b"hello\n")
        assert lines(partial) == b"hello\n"
        for n in range(UPGRADES):
            if n == 0:
                partial.sendall(b"par")
            before = (
                clients.lockstep.stats.exchanges,
                clients.idle.stats.exchanges,
                clients.stream.echoed,
            )
            upgrade(server, server.pidfile, server.track)
            if n == 0:
                partial.sendall(b"tial\n")
                assert lines(partial) == b"partial\n"
            waitFor(
                functools.partial(flowing, clients, before),
                20,
                what="traffic after the upgrade",
            )
    partial.sendall(b"still the same socket\n")
    assert lines(partial) == b"still the same socket\n"
    partial.close()
    log = server.logText()
    moved = [int(m) for m in re.findall(r"moved (\d+) connections to pid", log)]
    assert len(moved) == UPGRADES and min(moved) == 8 + 40 + 2, moved
    assert "connections drain here" not in log
    assert server.alive() == [server.serving()]


@pytest.mark.slow
def test_unixAndIpv6ConnectionsMove(flip, tmp_path: Path) -> None:
    """
    Connections on a Unix socket and on ::1 move like TCP ones.
    """
    path = tmp_path / "echo.sock"
    server = flip(
        "--idle-grace",
        "5",
        "--listen",
        f"unix:{path}",
        "--listen",
        r"tcp6:0:interface=\:\:1",
    )
    match = re.search(r"listening on tcp6:\[?::1\]?:(\d+)", server.logText())
    assert match, server.logText()
    unix = socket.socket(socket.AF_UNIX)
    unix.settimeout(10)
    unix.connect(str(path))
    six = socket.create_connection(("::1", int(match.group(1))), timeout=10)
    for client in (unix, six):
        client.sendall(b"par")
    for _ in range(3):
        upgrade(server, server.pidfile, server.track)
    for client in (unix, six):
        client.sendall(b"tial\n")
        assert lines(client) == b"partial\n"
        client.close()
    assert re.findall(r"moved (\d+) connections", server.logText()) == ["2"] * 3


def faultyUpgrade(server: Flip, fault: Path, mode: str, logged: str, what: str) -> int:
    """
    SIGHUP the serving generation with fault C{mode} set for the next one; wait
    until the log says C{logged}.  @return: the old generation's pid.
    """
    fault.write_text(mode)
    old = server.serving()
    os.kill(old, signal.SIGHUP)
    waitFor(lambda: logged in server.logText(), 20, what=what)
    return old


def test_refusedStateDrainsInTheOldGeneration(flip, fault: Path) -> None:
    """
    New code that cannot read the state refuses it: the connection stays with the
    old generation, which drains it (closes it with the next echo), never drops it.
    """
    server = flip("--idle-grace", "5", env={"FLIPAPP_FAULT": str(fault)}, app=True)
    client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    client.sendall(b"one\n")
    assert lines(client) == b"one\n"
    client.sendall(b"tw")
    refusal = "move refused by the new generation"
    old = faultyUpgrade(server, fault, "refuse-moves", refusal, "the refusal")
    assert pidAlive(old)
    client.sendall(b"o\n")
    assert lines(client) == b"two\n"
    assert client.recv(100) == b""  # closed with the echo, as draining does
    client.close()
    waitFor(lambda: not pidAlive(old), 20, what="the old generation to exit")
    assert "refused: flipapp: this version reads no moved state" in server.logText()


def test_newGenerationGoneBeforeTheMoveLeavesConnectionsDraining(
    flip, fault: Path
) -> None:
    """
    The new generation says ready, then dies before it takes anything: the
    channel breaks, and the old generation drains what it still holds (the
    partial line is echoed, then the connection closes), never dropping it.
    """
    server = flip("--idle-grace", "5", env={"FLIPAPP_FAULT": str(fault)}, app=True)
    client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    client.sendall(b"half a li")
    drain = "connections drain here"
    old = faultyUpgrade(
        server, fault, "exit-after-ready", drain, "the channel to break"
    )
    client.sendall(b"ne\n")
    assert lines(client, 2) == b"half a line\n"  # then closed, by the old one
    client.close()
    waitFor(lambda: not pidAlive(old), 20, what="the old generation to exit")


WIRE_ECHO = PLAIN.replace(
    "from txflip.echo import Echo", "from twisted.protocols.wire import Echo"
)


def plainProgram(tmp_path: Path, program: str, description: str) -> ServerProcess:
    return ServerProcess(
        [sys.executable, "-c", program, description],
        tmp_path / "server.log",
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT)},
    )


def test_protocolWithoutTheInterfaceDrains(tmp_path: Path) -> None:
    """
    A protocol that does not provide IMovable stays with the old generation,
    which serves it until its client closes.
    """
    port, pidfile = freePort(), tmp_path / "app.pid"
    description = f"flip:tcp:{port}:interface=127.0.0.1:pidfile={pidfile}"
    with plainProgram(tmp_path, WIRE_ECHO, description) as proc:
        first = waitFor(lambda: readPidFile(pidfile), 20, what="ready")
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        client.sendall(b"x")
        assert client.recv(10) == b"x"
        proc.send(signal.SIGHUP)
        second = waitFor(
            lambda: (p := readPidFile(pidfile)) != first and p, 20, what="ready"
        )
        proc.track(second)
        assert pidAlive(first)
        client.sendall(b"served by the old one")
        assert client.recv(100) == b"served by the old one"
        assert pidAlive(first)
        client.close()
        waitFor(lambda: not pidAlive(first), 20, what="the old generation to exit")


def test_tlsConnectionDrains(tmp_path: Path) -> None:
    """
    TLS cannot move (the session lives in the old process): the old generation
    drains it, closing it with the next echo.
    """
    import ssl

    keyPath, certPath = selfSigned(tmp_path)
    port, pidfile = freePort(), tmp_path / "tls.pid"
    description = (
        f"flip:ssl:{port}:interface=127.0.0.1:privateKey={keyPath}:certKey={certPath}"
        f":pidfile={pidfile}:idleGrace=5"
    )
    context = ssl.create_default_context(cafile=str(certPath))
    context.check_hostname = False
    with plainProgram(tmp_path, PLAIN, description) as proc:
        first = waitFor(lambda: readPidFile(pidfile), 20, what="ready")
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        client = context.wrap_socket(raw, server_hostname="localhost")
        client.sendall(b"secret\n")
        assert lines(client) == b"secret\n"
        proc.send(signal.SIGHUP)
        second = waitFor(
            lambda: (p := readPidFile(pidfile)) != first and p, 20, what="ready"
        )
        proc.track(second)
        client.sendall(b"again\n")
        # The echo, then the close (lines() reads on until EOF).
        assert lines(client, 2) == b"again\n"
        client.close()
        waitFor(lambda: not pidAlive(first), 20, what="the old generation to exit")


@pytest.mark.slow
def test_tenThousandIdleConnectionsMove(flip) -> None:
    """
    10,000 idle connections move in one upgrade, each still open and echoing
    afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 10_500:
        pytest.skip(
            f"needs 10,500 open files (hard limit {hard}): raise it, e.g. as root"
            " with ulimit -Hn 10500"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        server = flip("--idle-grace", "30")
        with Talkers("127.0.0.1", server.port, 10_000, idle=(3.0, 8.0)) as idle:
            upgrade(server, server.pidfile, server.track)
            moved = time.monotonic()
            # Each one answers, now from the new generation.
            waitFor(lambda: idle.silentSince(moved) == 0, 60, what="every echo")
            assert idle.open == 10_000
        log = server.logText()
        assert "moved 10000 connections" in log, log[-2000:]
        assert idle.stats.closed == 0 and idle.stats.errors == 0, idle.stats
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def webServer(tmp_path: Path) -> tuple[ServerProcess, Path, int]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "a.txt").write_bytes(b"a\n")
    pidfile = tmp_path / "twistd.pid"
    argv = [*twistdCommand(), "-n", "flip", "--idle-grace", "5", "web"]
    argv += ["--listen", "flip:tcp:0:interface=127.0.0.1", "--path", str(site)]
    proc = ServerProcess(
        argv, tmp_path / "web.log", cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}
    )
    waitFor(lambda: readPidFile(pidfile), 20, what="ready")
    match = re.search(r"listening on tcp:127\.0\.0\.1:(\d+)", proc.logText())
    assert match, proc.logText()
    return proc, pidfile, int(match.group(1))


@pytest.mark.slow
def test_httpKeepaliveClientsKeepTheirConnection(tmp_path: Path) -> None:
    """
    HTTP/1.1 keep-alive clients of an unmodified twistd web (flip:) see one
    connection each through upgrades: ours (http.client, which would silently
    reconnect: we check its socket is the first one) and curl with several URLs
    on one connection, paced so that upgrades happen between them.
    """
    curl = shutil.which("curl")
    proc, pidfile, port = webServer(tmp_path)
    with proc:
        clients = [http.client.HTTPConnection("127.0.0.1", port, timeout=10)]
        clients.append(http.client.HTTPConnection("127.0.0.1", port, timeout=10))
        sockets = []
        for client in clients:
            client.request("GET", "/a.txt")
            assert client.getresponse().read() == b"a\n"
            sockets.append(client.sock)
        curlRun = None
        if curl is not None:
            urls = [f"http://127.0.0.1:{port}/a.txt"] * 80
            curlRun = subprocess.Popen(
                [curl, "-sv", "--keepalive", "--rate", "8/s", *urls],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        with killedAtEnd(*([curlRun] if curlRun is not None else [])):
            curlAlive = []
            for _ in range(5):
                upgrade(proc, pidfile, proc.track)
                curlAlive.append(curlRun is not None and curlRun.poll() is None)
                for client, sock in zip(clients, sockets, strict=True):
                    client.request("GET", "/a.txt")
                    response = client.getresponse()
                    assert response.read() == b"a\n"
                    assert response.getheader("connection") != "close"
                    assert client.sock is sock and sock.fileno() != -1
            if curlRun is not None:
                assert sum(curlAlive) >= 3, (
                    f"curl ended before the upgrades: {curlAlive}"
                )
                out, err = curlRun.communicate(timeout=60)
                assert curlRun.returncode == 0, err[-2000:]
                assert out == b"a\n" * 80
                assert err.count(b"Connected to") == 1, err.decode()[-3000:]
                assert err.count(b"Re-using existing connection") == 79
        for client in clients:
            client.close()
        moved = re.findall(r"moved (\d+) connections", proc.logText())
        assert len(moved) == 5 and all(int(n) >= 2 for n in moved), moved
    if curl is None:
        pytest.skip(
            "curl is not installed: only our own client was checked"
            " (apt-get install curl, as .ci/run does)"
        )
