"""
HTTP/2 (twisted.web over C{flip:ssl} with ALPN) through upgrades, with clients
nobody here wrote: C{h2load} and C{curl --http2} (Debian's C{nghttp2-client} and
C{curl}).  The old generation sends a two-phase GOAWAY, finishes its streams and
exits as soon as they are done, not at the drain timeout.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("h2")

from hyperframe.frame import Frame, GoAwayFrame, PingFrame
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.protocols.apps import FlipApp
from txflip import IDrainable


@pytest.fixture
def h2app(tmp_path: Path) -> Iterator[FlipApp]:
    app = FlipApp(tmp_path, "streamapp", idleGrace=1.0, drainTimeout=30.0, tls=True)
    yield app
    app.proc.close()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_streamInFlightCompletesAndTheNextGoesToTheNewGeneration(h2app) -> None:
    """
    curl fetches C{/slow} (answered after 1.5 s) then C{/pid} over one HTTP/2
    connection; an upgrade starts meanwhile.  The slow stream completes from the
    old generation; the GOAWAY sends C{/pid} to a new connection, which the new
    generation serves; the old generation exits once its stream is done.
    """
    first = h2app.serving()
    base = h2app.base
    curl = subprocess.Popen(
        [
            *("curl", "-sk", "--http2", "--max-time", "20"),
            *("-w", "%{http_version}\n", f"{base}/slow", f"{base}/pid"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        os.kill(first, signal.SIGHUP)
        second = h2app.serving(other=first)
        took = h2app.exits(first, 20)
        out, err = curl.communicate(timeout=30)
    finally:
        if curl.poll() is None:
            curl.kill()
            curl.wait()
    assert curl.returncode == 0, err
    assert out.split() == [str(first), "2", str(second), "2"], (out, err)
    # The slow stream ends about a second after the new generation is ready.
    assert took < 2.0, took


@pytest.mark.skipif(
    shutil.which("h2load") is None,
    reason="needs h2load (apt-get install nghttp2-client, as .ci/run does)",
)
@pytest.mark.slow
def test_h2loadThroughThreeUpgrades(h2app) -> None:
    """
    h2load opens 100 HTTP/2 connections a second, each sending its 10 requests
    at once (each answered after 0.3 s, so that every upgrade finds streams in
    flight), through three upgrades: no request fails, and each old generation
    has exited within 2 s of the new one being ready.

    (h2load's clients that live on do not reconnect after a GOAWAY: a client
    with a request queued when one arrives counts it failed, though no server
    saw it; RFC 9113 lets it retry on a new connection, as curl and browsers
    do.  So the load is many connections, each with its requests in flight.)
    """
    pid = h2app.serving()
    url = f"{h2app.base}/wait"
    load = subprocess.Popen(
        [
            *("h2load", "-c", "600", "-r", "10", "--rate-period", "100ms"),
            *("-n", "6000", "-m", "10", url),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    exits = []
    try:
        time.sleep(1.0)
        for _ in range(3):
            os.kill(pid, signal.SIGHUP)
            new = h2app.serving(other=pid)
            exits.append(h2app.exits(pid, 20))
            pid = new
        out, _ = load.communicate(timeout=120)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    match = re.search(
        r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        out,
    )
    assert match, out
    total, succeeded, failed, errored, timedOut = map(int, match.groups())
    assert (total, succeeded, failed, errored, timedOut) == (6000, 6000, 0, 0, 0), out
    assert max(exits) < 2.0, exits
    assert "drain timeout" not in h2app.proc.logText()


class Later(Resource):
    """
    Answers each request when the test says so.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Request] = []

    def render_GET(self, request: Request) -> object:
        self.waiting.append(request)
        return NOT_DONE_YET


def frames(data: bytes) -> list[Frame]:
    """
    The HTTP/2 frames in C{data} (the server's, without the client preface).
    """
    found = []
    view = memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        found.append(frame)
        view = view[9 + length :]
    return found


def test_twoPhaseGoAwayThenCloseWhenStreamsAreDone() -> None:
    """
    Draining sends GOAWAY with the largest stream id and a PING; a stream the
    client opened before reading it is served; the PING's answer brings the
    final GOAWAY with the last stream id; the connection closes once both
    streams are answered, not before.
    """
    from h2.config import H2Configuration
    from h2.connection import H2Connection as Client
    from twisted.web._http2 import H2Connection

    from txflip.protocols._h2 import MAX_STREAM_ID, USED, DrainH2Connection

    clock = Clock()
    resource = Later()
    site = Site(resource)
    server: Any = H2Connection(reactor=clock)
    server.requestFactory = site.requestFactory
    server.site = site
    transport = StringTransport()
    server.makeConnection(transport)
    # As twisted.web's Site does once it negotiated h2:
    transport.registerProducer(server, True)
    for name in USED:
        assert hasattr(server, name), name
    client = Client(H2Configuration(client_side=True))
    client.initiate_connection()
    headers = [(":method", "GET"), (":path", "/"), (":scheme", "https")]
    headers.append((":authority", "x"))
    client.send_headers(1, headers, end_stream=True)
    server.dataReceived(client.data_to_send())
    clock.advance(0)
    transport.clear()

    drain = DrainH2Connection(server)
    drain.clock = clock
    assert IDrainable(server, None) is not None
    drain.startDraining()
    sent = [
        f for f in frames(transport.value()) if isinstance(f, GoAwayFrame | PingFrame)
    ]
    assert isinstance(sent[0], GoAwayFrame)
    assert (sent[0].last_stream_id, sent[0].error_code) == (MAX_STREAM_ID, 0)
    assert isinstance(sent[1], PingFrame)
    transport.clear()

    # A stream opened before the client read the GOAWAY, then the PING's answer.
    client.send_headers(3, headers, end_stream=True)
    ack = PingFrame(0, flags=["ACK"])
    ack.opaque_data = sent[1].opaque_data
    server.dataReceived(client.data_to_send() + ack.serialize())
    clock.advance(0)
    final = [f for f in frames(transport.value()) if isinstance(f, GoAwayFrame)]
    assert [f.last_stream_id for f in final] == [3]
    assert len(resource.waiting) == 2
    assert not transport.disconnecting

    for request in resource.waiting:
        request.write(b"done")
        request.finish()
        clock.advance(0.1)
    assert transport.disconnecting
    assert transport.producer is None


def test_aConnectionItsClientClosedIsNotDrained() -> None:
    """
    A client that sent its own GOAWAY has a connection twisted.web is closing
    (h2 refuses every frame after it): draining it sends nothing, and does not
    fail (it failed the whole drain before, and the process exited with streams
    of other connections in flight).
    """
    from h2.config import H2Configuration
    from h2.connection import H2Connection as Client
    from twisted.web._http2 import H2Connection

    from txflip.protocols._h2 import DrainH2Connection

    clock = Clock()
    server: Any = H2Connection(reactor=clock)
    server.site = Site(Resource())
    transport = StringTransport()
    server.makeConnection(transport)
    transport.registerProducer(server, True)
    client = Client(H2Configuration(client_side=True))
    client.initiate_connection()
    client.close_connection()
    server.dataReceived(client.data_to_send())
    transport.clear()
    drain = DrainH2Connection(server)
    drain.clock = clock
    drain.startDraining()
    drain.closeIfIdle()
    clock.advance(2)
    assert not [f for f in frames(transport.value()) if isinstance(f, GoAwayFrame)]
