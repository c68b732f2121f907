"""
End to end: an HTTP/1.1 request whose body is still arriving moves to the new
generation when the old one drains, over plain TCP, and the new code answers:
curl uploading 2 MB at 200 kB/s (Content-Length, and chunked), and raw sockets
cut at chosen bytes (headers only, mid-body, mid-headers, mid-chunk, after a
C{100 Continue}).  The old generation does not wait for the bodies.  Over TLS
it cannot move: the old generation reads the body and answers, as before.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import killedAtEnd, pidAlive
from tests.protocols.apps import FlipApp
from tests.protocols.test_web import Reader

pytestmark = pytest.mark.slow

SIZE = 2 * 1024 * 1024
#: The raw clients' body: larger than one read, smaller than a socket buffer.
BODY = os.urandom(100_000)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[FlipApp]:
    # A long idle grace and drain timeout: an old generation that waits for the
    # uploads would still be there when the test looks.
    app = FlipApp(tmp_path, "streamapp", idleGrace=20.0, drainTimeout=60.0)
    yield app
    app.proc.close()


def upgrade(app: FlipApp, first: int) -> tuple[int, float]:
    """
    SIGHUP C{first}: the new generation's pid, and how long after it was ready
    (its pid in the pid file) C{first} was gone.

    From the SIGHUP, starting the new generation alone takes 1 to 3 s on a
    loaded 2-core machine (a Python process importing twisted.web): the bound
    that says whether the old one waited for uploads is from the new one being
    ready, and the tests also check that the uploads were still under way.
    """
    os.kill(first, signal.SIGHUP)
    second = app.serving(other=first)
    return second, app.exits(first, 30)


def answer(body: bytes) -> tuple[int, str, int]:
    """
    The upload resource's answer: (serving pid, sha256, length).
    """
    pid, digest, length = body.split()
    return int(pid), digest.decode(), int(length)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_curlUploadMovesToTheNewGeneration(
    app: FlipApp, tmp_path: Path, chunked: bool
) -> None:
    """
    C{curl -T} a 2 MB file at 200 kB/s, SIGHUP at 2 s: 200 OK from the new
    generation, with the whole body (its sha256 and length); the old one is
    gone within 1 s of the new one being ready, while curl is still sending,
    not when the body is in.
    """
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (apt-get install curl, as .ci/run does)")
    data = os.urandom(SIZE)
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    first = app.serving()
    argv = [curl, "-sS", "-T", str(path), "--limit-rate", "200k"]
    argv += ["-w", "%{http_code}\n", f"{app.base}/upload"]
    if chunked:
        argv += ["-H", "Transfer-Encoding: chunked"]
    upload = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with killedAtEnd(upload):
        time.sleep(2)
        assert upload.poll() is None, upload.communicate()
        second, gone = upgrade(app, first)
        assert upload.poll() is None, "the upload ended before the old generation"
        out, err = upload.communicate(timeout=60)
    assert upload.returncode == 0, err.decode()
    body, code = out.rsplit(b"\n", 2)[:2]
    assert code == b"200", out
    assert answer(body) == (second, hashlib.sha256(data).hexdigest(), SIZE)
    assert gone < 1.0, f"the old generation was gone {gone:.2f} s after the new"


def putHead(length: int | None, expect: bool = False) -> bytes:
    head = b"PUT /upload HTTP/1.1\r\nHost: x\r\n"
    head += b"Expect: 100-continue\r\n" if expect else b""
    if length is None:
        return head + b"Transfer-Encoding: chunked\r\n\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % length


#: Each raw client's request, and where it is cut by the upgrade.
CHUNKED = putHead(None) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
PLAIN = putHead(len(BODY)) + BODY
CUTS = {
    "headers only": (PLAIN, len(putHead(len(BODY)))),
    "mid-body": (PLAIN, len(putHead(len(BODY))) + len(BODY) // 3),
    "mid-headers": (PLAIN, 20),
    "mid-chunk": (CHUNKED, len(putHead(None)) + 1000),
    "mid-chunk-size": (CHUNKED, len(putHead(None)) + 2),
    "100 Continue": (putHead(len(BODY), expect=True) + BODY, None),
}


def test_rawRequestsCutByTheUpgradeAreAnsweredByTheNewGeneration(app) -> None:
    """
    Raw clients each send part of a request, the server upgrades, they send
    the rest: each is answered by the new generation, with the whole body, on
    the same connection; the one that had its C{100 Continue} gets no second
    one.  The old generation does not wait for them.
    """
    first = app.serving()
    clients: dict[str, tuple[socket.socket, bytes]] = {}
    try:
        for name, (request, cut) in CUTS.items():
            sock = socket.create_connection(("127.0.0.1", app.port), timeout=10)
            if cut is None:
                cut = request.index(b"\r\n\r\n") + 4
                sock.sendall(request[:cut])
                assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
            else:
                sock.sendall(request[:cut])
            clients[name] = sock, request[cut:]
        time.sleep(0.3)  # read by the old generation
        second, gone = upgrade(app, first)
        assert gone < 1.0, f"the old generation was gone {gone:.2f} s after the new"
        for name, (sock, rest) in clients.items():
            sock.sendall(rest)
            _, body = Reader(sock).response()
            assert answer(body) == (
                second,
                hashlib.sha256(BODY).hexdigest(),
                len(BODY),
            ), name
    finally:
        for sock, _ in clients.values():
            sock.close()
    log = app.proc.logText()
    assert f"moved {len(CUTS)} connections" in log, log[-3000:]


def test_tlsUploadIsAnsweredByTheOldGeneration(tmp_path: Path) -> None:
    """
    Over TLS a request cannot move (the TLS session lives in the old process):
    the old generation reads the rest of the body, answers, and only then exits.
    """
    app = FlipApp(tmp_path, "streamapp", idleGrace=20.0, drainTimeout=60.0, tls=True)
    try:
        first = app.serving()
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", app.port), timeout=10)
        with context.wrap_socket(raw) as sock:
            sock.sendall(PLAIN[: len(PLAIN) // 2])
            os.kill(first, signal.SIGHUP)
            app.serving(other=first)
            time.sleep(1.0)
            assert pidAlive(first), "the old generation did not wait for the body"
            sock.sendall(PLAIN[len(PLAIN) // 2 :])
            _, body = Reader(sock).response()
        assert answer(body) == (first, hashlib.sha256(BODY).hexdigest(), len(BODY))
        app.exits(first, 10)
    finally:
        app.proc.close()
