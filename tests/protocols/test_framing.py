"""
Twisted's framing receivers and AMP, as a txflip user writes them (no IDrainable,
no private attribute: C{tests/protocols/framedapp.py}), through real upgrades of a
real plain program: lock-step clients and clients that pause in the middle of a
message lose nothing; moving connections keep their socket and their fields;
draining ones close right after a reply; a reply owed for 200 ms comes, then the
close.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Flip, reapExited, waitLine
from tests.framed import CODECS, Connection, LockStep
from tests.harness import freePort, readPidFile, waitFor, waitForUpgrade

UPGRADES = 5
APP = ROOT / "tests" / "protocols" / "framedapp.py"


class Served:
    """
    A framedapp of one family: its process, its moving and its draining port.
    """

    def __init__(self, tmp: Path, family: str) -> None:
        self.family = family
        self.moving, self.draining = freePort(), freePort()
        argv = [sys.executable, str(APP), family, str(tmp / "twistd.pid")]
        self.server = Flip(tmp, [*argv, str(self.moving), str(self.draining)], None)
        self.server.track(self.server.proc.pid)
        self.server.waitReady()

    def connect(self, port: int) -> Connection:
        return Connection(port, CODECS[self.family]())

    def upgrade(
        self, meanwhile: Callable[[], object] = lambda: None
    ) -> tuple[int, int]:
        """
        SIGHUP; once the new generation serves and the old one drains, call
        C{meanwhile}; wait for the old one to exit.

        Not as soon as the pid file names the new generation: the old one may
        not have heard yet, and would answer what C{meanwhile} sends as it
        serves, without closing; its drain would then wait for the idle grace.
        """
        old = self.server.serving()
        os.kill(old, signal.SIGHUP)
        new = waitFor(
            lambda: (pid := readPidFile(self.server.pidfile)) != old and pid,
            30,
            what="the new generation",
        )
        self.server.track(new)
        waitLine(self.server, old, "txflip: draining")
        meanwhile()
        waitForUpgrade(self.server.pidfile, old, timeout=30)
        return old, new

    def stop(self) -> None:
        pid = self.server.serving()
        os.kill(pid, signal.SIGQUIT)
        waitFor(lambda: pid not in self.server.alive(), 20, what="the last stop")
        self.server.proc.close()
        reapExited(self.server)


@pytest.fixture
def served(tmp_path: Path) -> Any:
    made: list[Served] = []

    def start(family: str) -> Served:
        made.append(Served(tmp_path, family))
        return made[-1]

    yield start
    for each in made:
        each.server.proc.close()
        reapExited(each.server)


def fields(reply: bytes) -> tuple[int, int, bytes]:
    pid, count, message = reply.split(b" ", 2)
    return int(pid), int(count), message


def flowing(moving: LockStep, draining: LockStep, before: tuple[int, int]) -> bool:
    return (
        moving.stats.exchanges > before[0] + 10
        and draining.stats.exchanges > before[1] + 10
    )


def half(message: bytes, family: str) -> tuple[bytes, bytes]:
    data = CODECS[family]().encode(message)
    cut = len(data) // 2
    return data[:cut], data[cut:]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CODECS))
def test_framingReceiversDrainAndMoveThroughUpgrades(served, family: str) -> None:
    """
    Through 5 upgrades, with lock-step clients on both ports: a moving
    connection keeps its socket and its count, and a message half sent before
    each upgrade is completed after it, on the same socket, answered by the new
    generation; on the draining port the half message is answered by the old
    generation, then the connection closes; nothing is lost, no client errs.
    """
    app = served(family)
    moving = LockStep(app.moving, family, "moving")
    draining = LockStep(app.draining, family, "draining")
    mover = app.connect(app.moving)
    _, last, _ = fields(mover.ask(b"first"))
    for thread in (moving, draining):
        thread.start()
    for _ in range(UPGRADES):
        drainer = app.connect(app.draining)
        assert fields(drainer.ask(b"hello"))[1] == 1
        before = (moving.stats.exchanges, draining.stats.exchanges)
        head, tail = half(b"half a message", family)
        mover.send(head)
        drainer.send(head)

        # The old generation drains until the draining half message is
        # complete; the moving one moves with its half.
        old, new = app.upgrade(functools.partial(drainer.send, tail))
        mover.send(tail)
        pid, count, message = fields(mover.reply())
        assert (pid, count, message) == (new, last + 1, b"half a message")
        last = count
        pid, count, message = fields(drainer.reply())
        assert (pid, count, message) == (old, 2, b"half a message")
        assert drainer.closedByServer(wait=True)
        drainer.close()
        waitFor(
            functools.partial(flowing, moving, draining, before),
            20,
            what=f"traffic after the upgrade ({moving.stats}, {draining.stats})",
        )
    movingStats, drainingStats = moving.stop(), draining.stop()
    assert movingStats.errors == [] and drainingStats.errors == []
    assert len(movingStats.ports) == 1 and movingStats.closes == 0, movingStats
    assert len(movingStats.pids) == UPGRADES + 1, movingStats
    assert drainingStats.closes >= UPGRADES, drainingStats
    pid, count, _ = fields(mover.ask(b"still here"))
    assert (pid, count) == (app.server.serving(), last + 1)
    mover.close()
    app.stop()


@pytest.mark.parametrize("family", ["line", "int32", "netstring", "amp"])
def test_replyOwedDuringTheDrainComesThenTheClose(served, family: str) -> None:
    """
    A message whose handler answers 200 ms later, received while the old
    generation drains: the reply comes (from the old generation), then the close
    on the draining port; on the moving port the connection moves once the
    reply is written, and goes on with the new generation.
    """
    app = served(family)
    drainer, mover = app.connect(app.draining), app.connect(app.moving)
    for connection in (drainer, mover):
        connection.ask(b"hello")
    old = app.server.serving()
    os.kill(old, signal.SIGHUP)
    waitLine(app.server, old, "txflip: draining")
    started = time.monotonic()
    drainer.send(drainer.codec.encode(b"slow one"))
    assert fields(drainer.reply()) == (old, 2, b"slow one")
    assert time.monotonic() - started >= 0.2
    assert drainer.closedByServer(wait=True)
    waitFor(lambda: old not in app.server.alive(), 20, what="the old generation")
    new = app.server.serving()
    assert fields(mover.ask(b"after")) == (new, 2, b"after")
    mover.close()
    app.stop()
