"""
HTTPS through C{flip:ssl} with real clients: curl offers ALPN (C{h2},
C{http/1.1}) and must get twisted.web's answer, over HTTP/1.1 and HTTP/2, before
and after an upgrade; a client that offers no ALPN still works.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.conftest import (
    ROOT,
    SUBREAPER,
    selfSigned,
    twistdCommand,
)
from tests.harness import (
    ServerProcess,
    freePort,
    readPidFile,
    reap,
    waitFor,
    waitForUpgrade,
)

pytestmark = pytest.mark.skipif(
    subprocess.run(["curl", "--version"], capture_output=True).returncode != 0,
    reason="needs curl",
)


def curl(port: int, *args: str) -> tuple[str, str]:
    """
    GET C{/small.txt} with curl: its HTTP version and status, and its body and
    error (its error says why when the version is C{0 000}).
    """
    done = subprocess.run(
        [
            "curl",
            "-k",
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_version} %{http_code}",
            "-o",
            "-",
            *args,
            f"https://127.0.0.1:{port}/small.txt",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    body, _, version = done.stdout.rpartition("\n")
    return version, body + done.stderr


def noAlpn(port: int) -> bytes:
    """
    GET C{/small.txt} with Python's C{ssl}, offering no ALPN; the whole answer.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as s:
            assert s.selected_alpn_protocol() is None
            s.sendall(
                b"GET /small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            return answer


def allClientsServed(port: int) -> None:
    assert curl(port, "--http1.1") == ("1.1 200", "small\n")
    assert curl(port, "--http2") == ("2 200", "small\n")
    assert curl(port) == ("2 200", "small\n")
    assert curl(port, "--no-alpn") == ("1.1 200", "small\n")
    answer = noAlpn(port)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert answer.endswith(b"\r\n\r\nsmall\n"), answer


def test_httpsWithAlpnAcrossUpgrade(tmp_path: Path) -> None:
    """
    twisted.web behind C{flip:ssl} under C{twistd -n flip web}: clients that
    offer ALPN negotiate C{h2} or C{http/1.1}, clients that offer none get
    HTTP/1.1, in the first generation and in the next.
    """
    pytest.importorskip("h2")
    keyPath, certPath = selfSigned(tmp_path)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "small.txt").write_text("small\n")
    port = freePort()
    pidfile = tmp_path / "web.pid"
    listen = (
        f"flip:ssl:{port}:interface=127.0.0.1:privateKey={keyPath}:certKey={certPath}"
    )
    argv = [
        *twistdCommand(),
        "-n",
        f"--pidfile={pidfile}",
        "flip",
        "web",
        "--listen",
        listen,
        "--path",
        str(tmp_path / "www"),
    ]
    with ServerProcess(
        argv, tmp_path / "web.log", cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}
    ) as proc:
        first = waitFor(lambda: readPidFile(pidfile), 20, what="ready")
        allClientsServed(port)
        proc.send(signal.SIGHUP)
        second, _, _ = waitForUpgrade(pidfile, first, timeout=30)
        proc.track(second)
        allClientsServed(port)
        os.kill(second, signal.SIGQUIT)
        if SUBREAPER:
            assert reap(second, 30) == 0


def test_trackerNegotiatesExactlyWhenItsFactoryDoes() -> None:
    """
    The tracker says what the factory it wraps says over ALPN (a C{Site}: C{h2}
    when twisted.web can speak it, C{http/1.1}); around a factory that speaks no
    negotiated protocol it provides nothing, so TLS around it answers no ALPN.
    """
    from twisted.internet.interfaces import IProtocolNegotiationFactory
    from twisted.internet.protocol import Factory
    from twisted.internet.task import Clock
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from txflip.drain._tracker import ConnectionTracker

    site = Site(Resource())
    web = ConnectionTracker(site, Clock())
    assert IProtocolNegotiationFactory.providedBy(web)
    assert web.acceptableProtocols() == site.acceptableProtocols()
    assert b"http/1.1" in web.acceptableProtocols()
    echo = ConnectionTracker(Factory(), Clock())
    assert not IProtocolNegotiationFactory.providedBy(echo)
    assert not hasattr(echo, "acceptableProtocols")
