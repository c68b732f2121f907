"""
End to end: the flip: endpoint around an unmodified Twisted server (twistd web),
under HTTP load through upgrades, and in a plain program using serverFromString.
"""

from __future__ import annotations

import functools
import http.client
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    PLAIN,
    ROOT,
    SUBREAPER,
    oneLineError,
    runTwistd,
    selfSigned,
    twistdCommand,
)
from tests.harness import (
    ServerProcess,
    freePort,
    pidAlive,
    readPidFile,
    reap,
    waitFor,
    waitForUpgrade,
)

UPGRADES = 10
BIG = 8 * 1024 * 1024


@dataclass
class HTTPStats:
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    closedByServer: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def moreThan(self, requests: int) -> bool:
        return self.requests > requests


def closeClient(port: int, stop: threading.Event, stats: HTTPStats) -> None:
    """
    One request per connection, with Connection: close.
    """
    while not stop.is_set():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/small.txt", headers={"Connection": "close"})
            body = conn.getresponse().read()
            assert body == b"small\n", body
            with stats.lock:
                stats.requests += 1
        except Exception as e:  # noqa: BLE001 - every failure is counted
            with stats.lock:
                stats.failures.append(f"close client: {e!r}")
        finally:
            conn.close()


def keepAliveClient(port: int, stop: threading.Event, stats: HTTPStats) -> None:
    """
    Keep-alive, retrying nothing: a request on a connection the server closed
    without saying so (no Connection: close) fails.
    """
    conn: http.client.HTTPConnection | None = None
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/small.txt")
            response = conn.getresponse()
            body = response.read()
            assert body == b"small\n", body
            with stats.lock:
                stats.requests += 1
            if response.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
                with stats.lock:
                    stats.closedByServer += 1
        except Exception as e:  # noqa: BLE001 - every failure is counted
            with stats.lock:
                stats.failures.append(f"keep-alive client: {e!r}")
            if conn is not None:
                conn.close()
            conn = None
        time.sleep(0.002)
    if conn is not None:
        conn.close()


def slowDownload(port: int, result: list[object]) -> None:
    """
    Download the big file slowly, so that upgrades happen mid-download.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(16384):
                data += chunk
                time.sleep(0.005)
        head, _, body = data.partition(b"\r\n\r\n")
        result.append((head.split(b"\r\n")[0], len(body)))
        result.append(time.monotonic())
    except Exception as e:  # noqa: BLE001
        result.append(e)


@pytest.mark.slow
def test_twistdWebWithFlipEndpointUnderLoad(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "small.txt").write_bytes(b"small\n")
    (site / "big.bin").write_bytes(os.urandom(BIG))
    pidfile = tmp_path / "twistd.pid"
    argv = [
        *twistdCommand(),
        "-n",
        "flip",
        "web",
        "--listen",
        "flip:tcp:0:interface=127.0.0.1",
        "--path",
        str(site),
    ]
    with ServerProcess(
        argv, tmp_path / "web.log", cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}
    ) as proc:
        first = waitFor(lambda: readPidFile(pidfile), 20, what="ready")
        log = (tmp_path / "web.log").read_text()
        port = int(log.split("listening on tcp:127.0.0.1:")[1].split()[0])
        stats, stop = HTTPStats(), threading.Event()
        threads = [
            threading.Thread(target=closeClient, args=(port, stop, stats))
            for _ in range(2)
        ]
        threads += [
            threading.Thread(target=keepAliveClient, args=(port, stop, stats))
            for _ in range(3)
        ]
        download: list[Any] = []
        downloader = threading.Thread(target=slowDownload, args=(port, download))
        for thread in threads:
            thread.start()
        downloader.start()
        pids = [first]
        hups: list[float] = []
        try:
            for _ in range(UPGRADES):
                before = stats.requests
                waitFor(
                    functools.partial(stats.moreThan, before + 20),
                    20,
                    what="traffic",
                )
                hups.append(time.monotonic())
                os.kill(pids[-1], signal.SIGHUP)
                new, _, _ = waitForUpgrade(pidfile, pids[-1], timeout=60)
                proc.track(new)
                pids.append(new)
        finally:
            stop.set()
            for thread in threads:
                thread.join(20)
            downloader.join(60)
        assert stats.failures == [], stats.failures[:5]
        # Keep-alive connections move to the new generation: none is closed.
        assert stats.requests > 200 and stats.closedByServer == 0
        assert download and download[0] == (b"HTTP/1.1 200 OK", BIG), download
        # It was still downloading when the first upgrade began.
        assert download[1] > hups[0]
        assert "[pid" in log
        os.kill(pids[-1], signal.SIGQUIT)
        if SUBREAPER:
            assert reap(pids[-1], 30) == 0
        waitFor(lambda: not pidAlive(pids[-1]), 30, what="exit")
        assert not pidfile.exists()


def test_badFlipDescriptionIsOneLine(tmp_path: Path) -> None:
    args = ["-n", "flip", "web", "--listen", "flip:tcp:http", "--path", "."]
    assert "port='http' is not a number" in oneLineError(runTwistd(args, tmp_path))


def test_plainProgramWithServerFromString(tmp_path: Path) -> None:
    port = freePort()
    pidfile = tmp_path / "plain.pid"
    description = f"flip:tcp:{port}:interface=127.0.0.1:pidfile={pidfile}"
    argv = [sys.executable, "-c", PLAIN, description]
    with ServerProcess(
        argv, tmp_path / "plain.log", cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}
    ) as proc:
        first = waitFor(lambda: readPidFile(pidfile), 20, what="ready")

        def echo() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"plain\n")
                return s.recv(100)

        assert echo() == b"plain\n"
        proc.send(signal.SIGHUP)
        second, _, _ = waitForUpgrade(pidfile, first, timeout=30)
        proc.track(second)
        assert echo() == b"plain\n"
        assert proc.waitExit(10) == 0
        os.kill(second, signal.SIGQUIT)
        if SUBREAPER:
            assert reap(second, 30) == 0
        assert not pidfile.exists()


@pytest.mark.slow
def test_flipSslAcrossUpgrade(tmp_path: Path) -> None:
    """
    flip:ssl: each generation builds its TLS context from its own arguments; the
    listening socket is inherited.
    """
    import ssl

    keyPath, certPath = selfSigned(tmp_path)
    port = freePort()
    pidfile = tmp_path / "tls.pid"
    description = (
        f"flip:ssl:{port}:interface=127.0.0.1:privateKey={keyPath}:certKey={certPath}"
        f":pidfile={pidfile}"
    )
    argv = [sys.executable, "-c", PLAIN, description]
    context = ssl.create_default_context(cafile=str(certPath))
    context.check_hostname = False

    def echo() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"secret\n")
                return s.recv(100)

    with ServerProcess(
        argv, tmp_path / "tls.log", cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}
    ) as proc:
        first = waitFor(lambda: readPidFile(pidfile), 20, what="ready")
        assert echo() == b"secret\n"
        proc.send(signal.SIGHUP)
        second, _, _ = waitForUpgrade(pidfile, first, timeout=30)
        proc.track(second)
        assert echo() == b"secret\n"
        os.kill(second, signal.SIGQUIT)
        if SUBREAPER:
            assert reap(second, 30) == 0
