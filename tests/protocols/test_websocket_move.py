"""
End to end: WebSockets whose Autobahn protocol opts in (txflip's IMovable) move
to the new generation between messages, served by twisted.web's
WebSocketResource or by Autobahn's factory directly, driven by real clients
(the C{websockets} library).  One that negotiated permessage-deflate cannot move
and closes with 1012 instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.harness import pidAlive
from tests.protocols.apps import FlipApp, Talk, talk

MODES = pytest.mark.parametrize(
    "mode", ["move", "direct move"], ids=["WebSocketResource", "direct"]
)


def upgrade(app: FlipApp, old: int, within: float = 3.0) -> int:
    """
    SIGHUP C{old}; wait for its successor, then for C{old} to exit (within
    C{within} seconds of the successor being ready).  The successor's pid.
    """
    os.kill(old, signal.SIGHUP)
    new = app.serving(other=old)
    took = app.exits(old, 20)
    assert took < within, took
    return new


def echoes(talk: Talk, nick: str) -> list[int]:
    """
    Check that every message C{talk} sent came back once, in order, counted
    without a gap by one protocol whatever the generation; the pids that
    echoed them, in order, each once.
    """
    assert talk.code is None  # the server never closed it
    assert len(talk.echoed) == len(talk.sent)
    pids: list[int] = []
    for n, (sent, echoed) in enumerate(zip(talk.sent, talk.echoed, strict=True)):
        assert isinstance(echoed, str)
        name, count, pid, rest = echoed.split(" ", 3)
        assert (name, int(count), rest) == (nick, n + 1, sent)
        if not pids or pids[-1] != int(pid):
            pids.append(int(pid))
    return pids


@pytest.mark.slow
@MODES
def test_webSocketsMoveThroughUpgrades(wsapp, mode: str) -> None:
    """
    Twenty clients (compression off) each sending a message every 20 ms
    through five upgrades: none is closed, no message is lost, each
    connection's counter and nickname (its handshake's query) carry on, every
    generation served every connection, and each old generation is gone within
    3 s of its successor being ready.
    """
    app = wsapp(idleGrace=5.0, drainTimeout=30.0, mode=mode)
    generations = [app.serving()]
    url = app.url
    started = threading.Barrier(21)
    stop = threading.Event()
    with ThreadPoolExecutor(20) as pool:
        talks = [
            pool.submit(talk, f"{url}?nick=n{n}", f"c{n}", started, stop, None)
            for n in range(20)
        ]
        started.wait(20)
        try:
            for _ in range(5):
                time.sleep(0.3)
                generations.append(upgrade(app, generations[-1]))
            time.sleep(0.3)
        finally:
            stop.set()
        results = [t.result(timeout=20) for t in talks]
    for n, result in enumerate(results):
        assert result.extensions == []
        assert echoes(result, f"n{n}") == generations
    assert "cannot move" not in app.proc.logText()


@MODES
def test_deflateWebSocketsCloseWith1012(wsapp, mode: str) -> None:
    """
    A client that offers permessage-deflate (as C{websockets} does by default),
    which the server accepts, cannot move: it is closed with 1012 at a message
    boundary, every message echoed; a client without compression, beside it,
    moves.
    """
    app = wsapp(idleGrace=1.0, drainTimeout=30.0, mode=f"{mode} deflate")
    first = app.serving()
    started = threading.Barrier(3)
    stop = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        deflate = pool.submit(talk, f"{app.url}?nick=d", "d", started, stop)
        plain = pool.submit(talk, f"{app.url}?nick=p", "p", started, stop, None)
        started.wait(20)
        try:
            time.sleep(0.3)
            second = upgrade(app, first, within=2.0)
            time.sleep(0.3)
        finally:
            stop.set()
        closed, moved = deflate.result(timeout=20), plain.result(timeout=20)
    assert [type(e).__name__ for e in closed.extensions] == ["PerMessageDeflate"]
    assert closed.code == 1012
    assert closed.sentClose
    assert len(closed.echoed) == len(closed.sent) > 5
    assert echoes(moved, "p") == [first, second]
    assert "cannot move (permessage-deflate negotiated)" in app.proc.logText()


@MODES
def test_aHalfSentFragmentedMessageMovesAfterItsEnd(wsapp, mode: str) -> None:
    """
    A message whose first fragment arrived before the upgrade and whose last
    came after the new generation was ready is received whole by the old
    generation, which answers it; the connection then moves, and its next
    message is answered by the new generation, its counter carried on.
    """
    app = wsapp(idleGrace=5.0, drainTimeout=30.0, mode=mode)
    first = app.serving()
    halfSent, resume = threading.Event(), threading.Event()

    def fragments():
        yield "one-"
        halfSent.set()
        assert resume.wait(20)
        yield "two-"
        yield "three"

    with connect(f"{app.url}?nick=f", open_timeout=5, compression=None) as client:
        client.send("hello")
        assert client.recv(timeout=5) == f"f 1 {first} hello"
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(client.send, fragments())
            assert halfSent.wait(10)
            time.sleep(0.1)
            os.kill(first, signal.SIGHUP)
            second = app.serving(other=first)
            time.sleep(0.5)
            assert pidAlive(first)  # waiting for the end of that message
            resume.set()
            sending.result(timeout=10)
        assert client.recv(timeout=5) == f"f 2 {first} one-two-three"
        assert app.exits(first, 10) < 3.0
        client.send("after")
        assert client.recv(timeout=5) == f"f 3 {second} after"


NODE = shutil.which("node")


@pytest.mark.slow
@pytest.mark.skipif(NODE is None, reason="Node is not installed")
@MODES
def test_nodeClientsMoveThroughUpgrades(wsapp, mode: str, tmp_path: Path) -> None:
    """
    Node's own WebSocket client (undici's), five connections each sending a
    message every 20 ms through three upgrades: none is closed, no message is
    lost, counters and nicknames carry on.
    """
    assert NODE is not None
    app = wsapp(idleGrace=5.0, drainTimeout=30.0, mode=mode)
    generations = [app.serving()]
    script = Path(__file__).with_name("wsclient.mjs")
    with (tmp_path / "node.err").open("w") as errors:
        node = subprocess.Popen(
            [NODE, "--experimental-websocket", str(script), app.url, "5"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    try:
        assert node.stdout is not None and node.stdin is not None
        assert node.stdout.readline().strip() == "open"
        for _ in range(3):
            time.sleep(0.3)
            generations.append(upgrade(app, generations[-1]))
        time.sleep(0.3)
        out, _ = node.communicate(timeout=20)  # closes its stdin: stop
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    assert node.returncode == 0, (tmp_path / "node.err").read_text()
    for n, result in enumerate(json.loads(out)):
        talk = Talk()
        talk.sent, talk.echoed, talk.code = (
            result["sent"],
            result["echoed"],
            result["code"],
        )
        assert echoes(talk, f"n{n}") == generations
