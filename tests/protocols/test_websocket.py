"""
End to end: twisted.web with Autobahn's WebSocketResource behind C{flip:}, driven by
real WebSocket clients (the C{websockets} library).  Autobahn swaps the transport's
protocol when a request upgrades to WebSocket: txflip must still see each
connection end (it follows the transport), and a generation exits at its drain
deadline whatever it believes is still open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.conftest import ROOT
from tests.harness import pidAlive
from tests.protocols.apps import talk


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


@pytest.mark.slow
def test_theOldGenerationExitsAtItsDrainDeadline(wsapp) -> None:
    """
    A WebSocket that never ends (its protocol drains itself, and does nothing)
    is aborted at the drain timeout, and the old generation exits right then.
    """
    app = wsapp(idleGrace=0.5, drainTimeout=3.0, mode="stay")
    first = app.serving()
    with connect(app.url, open_timeout=5) as client:
        client.send("stay")
        assert client.recv(timeout=5) == "stay"
        os.kill(first, signal.SIGHUP)
        app.serving(other=first)
        took = app.exits(first, 20)
    assert took < 3.0 + 2.0, took
    assert "drain timeout: aborting 1 connections" in app.proc.logText()


@pytest.mark.parametrize("mode", ["", "direct"], ids=["WebSocketResource", "direct"])
def test_webSocketsCloseWith1012AtAMessageBoundary(wsapp, mode: str) -> None:
    """
    Twenty clients each sending a message every 20 ms through an upgrade: each
    is closed by the old generation with close code 1012 (Service Restart)
    right after an echo (none aborted, every message sent got its echo), and
    the old generation exits within the idle grace and a second.  Served by
    twisted.web's WebSocketResource, and by Autobahn's factory directly.
    """
    idleGrace = 1.0
    app = wsapp(idleGrace=idleGrace, drainTimeout=30.0, mode=mode)
    first = app.serving()
    url = app.url
    started = threading.Barrier(21)
    with ThreadPoolExecutor(20) as pool:
        talks = [pool.submit(talk, url, f"c{n}", started) for n in range(20)]
        started.wait(20)
        time.sleep(0.3)
        os.kill(first, signal.SIGHUP)
        app.serving(other=first)
        took = app.exits(first, 20)
        results = [t.result(timeout=20) for t in talks]
    assert took < idleGrace + 1.0, took
    assert [r.code for r in results] == [1012] * 20
    for r in results:
        assert r.sentClose  # the closing handshake completed: not an abort
        assert len(r.sent) > 5
        assert r.echoed == r.sent  # no message lost
    with connect(url, open_timeout=5) as client:
        client.send("again")
        assert client.recv(timeout=5) == "again"


def test_autobahnIsNotImportedByTxflip() -> None:
    """
    txflip drains Autobahn's protocols without importing Autobahn: a process
    that does not use it does not pay for it.
    """
    code = "import sys, txflip; print('autobahn' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert out.stdout.strip() == "False", out.stderr


def test_autobahnStillHasWhatWeUse() -> None:
    """
    What L{txflip.protocols._websocket} uses of Autobahn beyond its documented
    API is still there, on a server protocol past its opening handshake.
    """
    from autobahn.twisted.websocket import (
        WebSocketServerFactory,
        WebSocketServerProtocol,
    )
    from twisted.internet.testing import StringTransport

    from txflip.protocols._websocket import (
        MODULE,
        PRIVATE,
        RESOURCE_MODULE,
        RESOURCE_PRIVATE,
        isWebSocket,
    )

    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    protocol: Any = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    assert protocol.state == protocol.STATE_OPEN
    for name in PRIVATE:
        assert hasattr(protocol, name), name
    assert protocol.STATE_OPEN != protocol.STATE_CONNECTING
    assert protocol.send_state == protocol.SEND_STATE_GROUND
    assert isWebSocket(protocol)
    assert MODULE in sys.modules
    from autobahn.twisted.resource import WebSocketResource

    resource = WebSocketResource(factory)
    for name in RESOURCE_PRIVATE:
        assert hasattr(resource, name), name
    assert RESOURCE_MODULE == WebSocketResource.__module__
