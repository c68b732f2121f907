"""
End to end: draining twisted.web's HTTP/1.1 connections, with raw sockets so that
what the server sends (headers, bodies, the close) is seen exactly: a response
still being sent when the idle grace ends, requests pipelined during the drain,
and a library user's own Site.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, twistdCommand
from tests.harness import ServerProcess, pidAlive, readPidFile, waitFor

BIG = 8 * 1024 * 1024
SMALL = b"small\n"
GET = b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"


class Web:
    """
    One HTTP server under test (twistd web with flip:, or tests/webapp.py).
    """

    def __init__(self, tmp: Path, argv: list[str], pidfile: Path) -> None:
        self.pidfile = pidfile
        self.logPath = tmp / "web.log"
        self.proc = ServerProcess(
            argv, self.logPath, cwd=tmp, env={"PYTHONPATH": str(ROOT)}
        )
        self.first = waitFor(lambda: readPidFile(pidfile), 20, what="ready")
        self.proc.track(self.first)

    @property
    def port(self) -> int:
        text = self.proc.logText()
        return int(text.split("listening on tcp:127.0.0.1:")[1].split()[0])

    def upgrade(self) -> int:
        """
        SIGHUP the first generation; return once it drains (its successor serves).
        """
        os.kill(self.first, signal.SIGHUP)
        new = waitFor(
            lambda: (p := readPidFile(self.pidfile)) != self.first and p,
            30,
            what="the new generation",
        )
        self.proc.track(new)
        waitFor(lambda: "txflip: draining" in self.proc.logText(), 20, what="the drain")
        return new


@pytest.fixture
def site(tmp_path: Path) -> Path:
    directory = tmp_path / "site"
    directory.mkdir()
    (directory / "small.txt").write_bytes(SMALL)
    (directory / "big.bin").write_bytes(os.urandom(BIG))
    return directory


@pytest.fixture
def web(tmp_path: Path, site: Path) -> Iterator[object]:
    """
    C{web(idleGrace, drainTimeout, library=False)} -> a ready L{Web}, with moving
    connections switched off: these tests are about draining them
    (test_move_upgrades.py has moving).
    """
    started: list[Web] = []

    def start(grace: float, timeout: float, library: bool = False) -> Web:
        pidfile = tmp_path / "web.pid"
        if library:
            argv = [sys.executable, str(ROOT / "tests" / "webapp.py"), str(pidfile)]
            argv += ["tcp:0:interface=127.0.0.1", str(site), str(grace), str(timeout)]
            argv += ["no-move"]
        else:
            argv = [*twistdCommand(), "-n", f"--pidfile={pidfile}", "flip"]
            argv += [f"--idle-grace={grace}", f"--drain-timeout={timeout}"]
            argv += ["--no-move", "web", "--listen", "flip:tcp:0:interface=127.0.0.1"]
            argv += ["--path", str(site)]
        server = Web(tmp_path, argv, pidfile)
        started.append(server)
        return server

    yield start
    for server in started:
        server.proc.close()


class Reader:
    """
    HTTP/1.1 responses (with Content-Length) read off a raw socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def fill(self, size: int = 65536) -> bool:
        chunk = self.sock.recv(size)
        self.buffer += chunk
        return bool(chunk)

    def response(
        self, pace: float = 0.0, status: bytes = b"200 OK"
    ) -> tuple[dict[bytes, bytes], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            assert self.fill(), f"connection closed mid-headers: {self.buffer!r}"
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"HTTP/1.1 " + status, lines[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers[b"content-length"])
        while len(self.buffer) < length:
            assert self.fill(16384), "connection closed mid-body"
            if pace:
                time.sleep(pace)
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return headers, body

    def closed(self) -> bool:
        """
        Whether the server closed cleanly (EOF with nothing more), within the
        socket's timeout.
        """
        return not self.fill() and not self.buffer


def connect(port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    return sock


@contextlib.contextmanager
def keptAlive(server: Web, timeout: float) -> Iterator[tuple[socket.socket, Reader]]:
    """
    A keep-alive connection that has had one response, then C{server}'s upgrade:
    the block goes on with it during the old generation's drain.
    """
    with connect(server.port, timeout=timeout) as sock:
        reader = Reader(sock)
        sock.sendall(GET % b"small.txt")
        assert reader.response()[1] == SMALL
        server.upgrade()
        yield sock, reader


@pytest.mark.slow
def test_responseUnderWayWhenGraceEndsClosesAfterIt(web) -> None:
    """
    A keep-alive download still being sent when the idle grace ends is closed as
    soon as it completes, not left idle until the drain timeout aborts it.
    """
    server = web(grace=0.5, timeout=60)
    with connect(server.port, timeout=15) as sock:
        reader = Reader(sock)
        sock.sendall(GET % b"big.bin")
        reader.fill()
        server.upgrade()
        # Not reading: the response stays under way past the end of the grace.
        graceOver = time.monotonic() + 1.0
        waitFor(lambda: time.monotonic() > graceOver, 5, what="the grace's end")
        headers, body = reader.response()
        assert len(body) == BIG and b"connection" not in headers
        assert reader.closed(), "not closed after the response completed"
    waitFor(lambda: not pidAlive(server.first), 15, what="the old generation exit")


def test_requestsPipelinedDuringDrainAreAllAnswered(web) -> None:
    """
    Three GETs pipelined in one segment during the drain: three responses, the
    last with Connection: close, then the close.
    """
    server = web(grace=5, timeout=30)
    with keptAlive(server, timeout=10) as (sock, reader):
        sock.sendall((GET % b"small.txt") * 3)
        answers = [reader.response() for _ in range(3)]
        assert [body for _, body in answers] == [SMALL] * 3
        assert [h.get(b"connection") for h, _ in answers] == [None, None, b"close"]
        assert reader.closed()


@pytest.mark.slow
def test_requestWithABodyClosesWithItsResponseDuringDrain(web) -> None:
    """
    A request with a body during the drain (twisted.web then keeps an empty chunk
    in its buffer, which is no further request) gets C{Connection: close} and the
    connection closes with its response, instead of lingering to the grace's end.
    """
    server = web(grace=30, timeout=60)
    with keptAlive(server, timeout=10) as (sock, reader):
        body = b"0123456789"
        sock.sendall(
            b"POST /small.txt HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
            % len(body)
        )
        sock.sendall(body)
        headers, _ = reader.response(status=b"405 Method Not Allowed")
        assert headers.get(b"connection") == b"close"
        assert reader.closed(), "not closed with the response"


@pytest.mark.slow
def test_librarySiteDrainsKeepaliveConnections(web) -> None:
    """
    UpgradeService.listen(..., Site(...)) after only C{import txflip}: an idle
    keep-alive connection is closed at the end of the idle grace, not aborted at
    the drain timeout.
    """
    server = web(grace=0.5, timeout=60, library=True)
    with keptAlive(server, timeout=15) as (_, reader):
        assert reader.closed()
    waitFor(lambda: not pidAlive(server.first), 15, what="the old generation exit")


def test_importTxflipRegistersTheWebAdapter() -> None:
    code = (
        "import txflip\n"
        "from twisted.web.http import HTTPChannel\n"
        "from twisted.web.server import Site\n"
        "from twisted.web.resource import Resource\n"
        "assert txflip.IDrainable(HTTPChannel(), None) is not None\n"
        "protocol = Site(Resource()).buildProtocol(None)\n"
        "assert txflip.IDrainable(protocol, None) is not None\n"
    )
    runsClean(code)


def runsClean(code: str) -> None:
    """
    Run C{code} in a fresh interpreter importing txflip from the checkout.
    """
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_importTxflipLeavesTwistedWebOut() -> None:
    """
    A server that does not serve the web does not pay for twisted.web: its
    adapters are registered once it is imported (L{txflip.protocols}).
    """
    code = (
        "import sys, txflip\n"
        "web = sorted(m for m in sys.modules if m.startswith('twisted.web'))\n"
        "assert not web, web\n"
    )
    runsClean(code)


def test_privateAttributesReadByTheAdapterExist() -> None:
    """
    txflip.protocols._web reads a few private attributes of twisted.web: fail loudly here,
    not quietly in a drain, when Twisted renames them.
    """
    from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from txflip.protocols import _web

    channel = HTTPChannel()
    for name in _web.PRIVATE:
        assert hasattr(channel, name), name
    protocol = Site(Resource()).buildProtocol(None)
    assert isinstance(protocol, _GenericHTTPChannelProtocol)
    assert isinstance(protocol._channel, HTTPChannel)
