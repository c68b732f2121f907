"""
A twisted.web resource that streams server-sent events hears of the drain
(L{txflip.whenDraining}), ends its stream at an event boundary with a C{retry:}
hint, and an C{EventSource}-style reader (written here: it reads the stream,
and reconnects when it ends, after the hinted delay) goes on with the new
generation at once; the old generation does not wait for its drain timeout.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.protocols.apps import FlipApp

pytestmark = pytest.mark.slow


class EventSource:
    """
    Reads C{/events} as a browser's C{EventSource} does: one HTTP/1.1 request,
    events (C{data:} lines, ended by a blank line) until the stream ends, then
    again after the last C{retry:} hint, on a kept-alive connection if the
    server kept it.
    """

    def __init__(self, port: int, tls: bool) -> None:
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            self.connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", port, context=context
            )
        else:
            self.connection = http.client.HTTPConnection("127.0.0.1", port)
        #: The serving pid of each event, in order.
        self.events: list[int] = []
        #: How each stream ended: its retry hint (None: without one).
        self.ends: list[int | None] = []
        self.stop = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        retry = 3000
        try:
            while not self.stop.is_set():
                self.connection.request("GET", "/events")
                response = self.connection.getresponse()
                assert response.status == 200
                hint = None
                while line := response.readline():
                    if line.startswith(b"data: "):
                        self.events.append(int(line[6:]))
                    elif line.startswith(b"retry: "):
                        hint = retry = int(line[7:])
                if self.stop.is_set():
                    break
                self.ends.append(hint)
                time.sleep(retry / 1000)
        except BaseException as e:  # noqa: BLE001 - the test reports it
            if not self.stop.is_set():
                self.failure = e
        finally:
            self.connection.close()

    def finish(self, thread: threading.Thread) -> None:
        """
        Stop reading, in the middle of a stream.
        """
        self.stop.set()
        sock = self.connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        thread.join(10)
        assert not thread.is_alive()


@pytest.fixture(params=[False, True], ids=["tcp-moves", "tls-drains"])
def sseapp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FlipApp]:
    app = FlipApp(
        tmp_path, "streamapp", idleGrace=2.0, drainTimeout=30.0, tls=request.param
    )
    yield app
    app.proc.close()


def test_eventStreamEndsWithRetryAndGoesOnWithTheNewGeneration(sseapp) -> None:
    """
    Through an upgrade, the reader's stream from the old generation ends with
    the C{retry: 50} hint, its next stream comes from the new generation, no
    event comes from the old one after one from the new, and the old
    generation exits well within its idle grace (2 s) and drain timeout.
    """
    first = sseapp.serving()
    reader = EventSource(sseapp.port, sseapp.tls)
    thread = threading.Thread(target=reader.run)
    thread.start()
    try:
        time.sleep(0.5)
        assert reader.events and set(reader.events) == {first}, reader.events
        os.kill(first, signal.SIGHUP)
        second = sseapp.serving(other=first)
        took = sseapp.exits(first, 20)
        time.sleep(0.5)
    finally:
        reader.finish(thread)
    assert reader.failure is None, reader.failure
    assert took < 1.5, took
    assert reader.ends and set(reader.ends) == {50}, reader.ends
    events = reader.events
    switch = events.index(second)
    assert set(events[:switch]) == {first}
    assert set(events[switch:]) == {second}
    assert len(events) - switch > 5
