"""
End to end: a new generation that stalls right after it said it was ready (a long
GC pause, a blocking warm-up; here a real C{SIGSTOP}) while the old one moves its
connections to it.  The old generation gives up on the moves channel after
L{txflip.move._out.ANSWER_TIMEOUT} seconds and serves on what it still holds; a
move is all or nothing: no client loses a line or sees a close without its reply,
and the successor, once resumed, takes none of the connections it was sent.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import lines, spawned
from tests.harness import pidAlive, waitFor
from txflip.move._out import ANSWER_TIMEOUT
from txflip.run._workers import openConnections

pytestmark = pytest.mark.slow


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "T"


def test_aSuccessorStalledAfterReadyTakesNothingAndLosesNothing(
    flip, fault: Path
) -> None:
    server = flip(env={"FLIPAPP_FAULT": str(fault)}, app=True)
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    idle.sendall(b"a0\n")
    assert lines(idle) == b"a0\n"
    partial = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    partial.sendall(b"partial-")
    fault.write_text("stop-after-ready")
    old = server.serving()
    os.kill(old, signal.SIGHUP)
    new = spawned(server, 2)
    try:
        waitFor(lambda: stopped(new), 20, interval=0.01, what="the successor stops")
        stoppedAt = time.monotonic()
        time.sleep(2)
        idle.sendall(b"a1\n")
        time.sleep(max(0.0, stoppedAt + ANSWER_TIMEOUT + 2 - time.monotonic()))
        assert pidAlive(old)
        assert "moves channel gave no answer" in server.logText()
    finally:
        os.kill(new, signal.SIGCONT)
    # The successor runs again, and reads what the channel still held.
    waitFor(lambda: "moves channel" in _after(server.logText(), new), 20, what="it")
    time.sleep(0.5)
    assert lines(idle) == b"a1\n", server.logText()[-3000:]
    partial.sendall(b"b1\n")
    assert lines(partial) == b"partial-b1\n", server.logText()[-3000:]
    assert openConnections(new) == 0, server.logText()[-3000:]
    for client in (idle, partial):
        assert client.recv(100) == b""  # closed with its reply, by the old one
        client.close()
    waitFor(lambda: not pidAlive(old), 20, what="the old generation to exit")
    assert "(0 connections taken over" in _after(server.logText(), new)


def _after(log: str, pid: int) -> str:
    """
    The lines pid C{pid} logged.
    """
    return "\n".join(line for line in log.splitlines() if f"[pid {pid}]" in line)
