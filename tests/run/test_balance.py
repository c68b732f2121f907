"""
Unit tests for txflip.run._balance: the workers' shared table, one worker's pausing and
resuming, and the one private part of Twisted it uses (C{tcp.Port.numberAccepts}).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from txflip.run._balance import (
    PAUSED_LOOK,
    TICK,
    Balancer,
    Table,
    limitBatches,
    slack,
)


class FakeFDSet(Clock):
    """
    A clock that records which readers are registered.
    """

    def __init__(self) -> None:
        super().__init__()
        self.readers: set[object] = set()

    def addReader(self, reader: object) -> None:
        self.readers.add(reader)

    def removeReader(self, reader: object) -> None:
        self.readers.discard(reader)


class Port:
    numberAccepts = 100

    def __init__(self) -> None:
        self.reads: list[int] = []

    def doRead(self) -> None:
        self.reads.append(self.numberAccepts)


@pytest.fixture
def table() -> Iterator[Table]:
    made, fd = Table.create()
    os.close(fd)
    yield made
    made.close()


def worker(table: Table, pid: int, held: list[int]) -> tuple[Balancer, FakeFDSet, Port]:
    fdset, port = FakeFDSet(), Port()
    fdset.readers.add(port)
    table.claim(pid)
    balancer = Balancer(
        fdset,  # type: ignore[arg-type]
        table,
        lambda: [port],  # type: ignore[list-item]
        lambda: held[0],
        pid=pid,
    )
    return balancer, fdset, port


def test_aTableIsSharedThroughItsFd() -> None:
    made, fd = Table.create()
    try:
        assert made.claim(100) == 1 and made.claim(200) == 2
        other = Table.inherited(os.dup(fd))
        assert other is not None
        assert other.find(200) == 2 and other.find(300) is None
        made.release(100)
        assert other.find(100) is None and made.claim(300) == 1
        other.close()
    finally:
        os.close(fd)
        made.close()


def test_anInheritedFdThatIsNoTableIsIgnored(tmp_path: object) -> None:
    r, w = os.pipe()
    os.close(w)
    assert Table.inherited(r) is None


def test_theWorkerWithMoreThanItsSharePausesUntilTheOthersCatchUp(
    table: Table,
) -> None:
    aHeld, bHeld = [0], [0]
    a, aReactor, aPort = worker(table, 100, aHeld)
    b, bReactor, bPort = worker(table, 200, bHeld)
    a.start()
    b.start()
    aHeld[0] = 1
    a.check()
    assert not a.paused and a.allowance == 1  # one more, within slack(0) == 1
    aHeld[0] = 2
    a.check()
    assert a.paused and aPort not in aReactor.readers and a.allowance == 0
    assert not b.paused and bPort in bReactor.readers  # the fewest never pauses
    bHeld[0] = 1
    b.check()
    assert not b.paused
    a.check()
    assert not a.paused and aPort in aReactor.readers


def test_aPausedWorkerLooksAgainSoon(table: Table) -> None:
    """
    In a burst two workers may each pause on the other's count of a moment ago:
    a paused worker looks again after PAUSED_LOOK, well before its next TICK, so
    that connections do not wait in the kernel's queue meanwhile.
    """
    aHeld, bHeld = [2], [0]
    a, aReactor, aPort = worker(table, 100, aHeld)
    b, _, _ = worker(table, 200, bHeld)
    b.start()
    a.start()
    assert a.paused
    bHeld[0] = 5  # b took a burst, and pauses in turn
    b.check()
    assert b.paused
    aReactor.advance(PAUSED_LOOK)
    assert not a.paused and aPort in aReactor.readers
    assert PAUSED_LOOK * 5 <= TICK
    b.stop()
    aHeld[0] = 20
    a.check()
    assert not a.paused  # b stopped serving
    a.stop()
    assert not aReactor.getDelayedCalls()


def test_theSlackGrowsWithTheConnections(table: Table) -> None:
    aHeld, bHeld = [80 + slack(80)], [80]
    a, _, _ = worker(table, 100, aHeld)
    b, _, _ = worker(table, 200, bHeld)
    b.start()
    a.start()
    assert slack(80) == 11 and not a.paused
    aHeld[0] += 1
    a.check()
    assert a.paused


def test_aWorkerWithAStaleHeartbeatIsNoReasonToPause(table: Table) -> None:
    """
    A worker that hangs (or was killed, and is not reaped yet) stops counting
    once its heartbeat is older than STALE: the others accept again.
    """
    aHeld, bHeld = [10], [0]
    a, aReactor, aPort = worker(table, 100, aHeld)
    b, _, _ = worker(table, 200, bHeld)
    b.start()
    a.start()
    assert a.paused
    deadline = time.monotonic() + 5
    while a.paused and time.monotonic() < deadline:
        aReactor.advance(TICK)  # b's reactor never runs: no heartbeat
        time.sleep(TICK)
    assert not a.paused and aPort in aReactor.readers
    assert time.monotonic() < deadline


def test_aWorkerThatStoppedServingOrIsGoneIsNoReasonToPause(table: Table) -> None:
    aHeld, bHeld, cHeld = [10], [0], [0]
    a, _, _ = worker(table, 100, aHeld)
    b, bReactor, bPort = worker(table, 200, bHeld)
    c, _, _ = worker(table, 300, cHeld)
    for each in (b, c, a):
        each.start()
    assert a.paused
    b.stop()  # about to stop listening
    a.check()
    assert a.paused  # c is still there
    table.release(300)  # c is reaped
    a.check()
    assert not a.paused
    bHeld[0] = 50
    b.check()
    assert not b.paused and bPort in bReactor.readers  # stopped: hands off


def test_withoutASlotAWorkerAcceptsAsIfAlone(table: Table) -> None:
    fdset, port = FakeFDSet(), Port()
    held = [50]
    table.claim(200)
    lone = Balancer(
        fdset,  # type: ignore[arg-type]
        table,
        lambda: [port],  # type: ignore[list-item]
        lambda: held[0],
        pid=999,
    )
    lone.start()
    assert not lone.paused and lone.allowance is None


def test_burstsAreCappedToTheAllowance(table: Table) -> None:
    aHeld, bHeld = [0], [0]
    a, _, aPort = worker(table, 100, aHeld)
    b, _, _ = worker(table, 200, bHeld)
    b.start()
    a.start()
    aPort.doRead()
    aHeld[0] = 1
    a.check()
    aPort.doRead()
    assert aPort.reads == [2, 1]


def test_twistedsTcpPortStillHonoursNumberAccepts() -> None:
    """
    The private part: C{tcp.Port.numberAccepts} limits one wakeup's accepts.
    Fails loudly here (and logs at run time) if Twisted changes it.
    """
    accepted: list[Protocol] = []

    class Counting(Factory):
        def buildProtocol(self, addr: object) -> Protocol:
            protocol = Protocol()
            accepted.append(protocol)
            return protocol

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(10)
    listening.setblocking(False)
    port = reactor.adoptStreamPort(  # type: ignore[attr-defined]
        listening.fileno(), socket.AF_INET, Counting()
    )
    clients = []
    try:
        assert isinstance(port.numberAccepts, int)
        assert limitBatches(port, lambda: 1)
        for _ in range(3):
            clients.append(socket.create_connection(listening.getsockname()))
        time.sleep(0.1)
        port.doRead()
        assert len(accepted) == 1
        port.doRead()
        assert len(accepted) == 2
    finally:
        for client in clients:
            client.close()
        for protocol in accepted:
            assert protocol.transport is not None
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
        reactor.removeReader(port)
        port.socket.close()
        listening.close()


def test_aPortWithoutNumberAcceptsIsLeftAlone() -> None:
    class Other:
        def doRead(self) -> None:
            pass

    other = Other()
    original = other.doRead
    assert not limitBatches(other, lambda: 1)
    assert other.doRead == original


def test_eachConnectionOpenedOrClosedCountsAtOnce(table: Table) -> None:
    """
    Between ticks, the trackers' +1/-1 keep the slot right and pause or resume
    the worker at the connection that crosses the line.
    """
    aHeld, bHeld = [0], [0]
    a, aReactor, aPort = worker(table, 100, aHeld)
    b, _, _ = worker(table, 200, bHeld)
    b.start()
    a.start()
    a.changed(+1)
    assert not a.paused and table.fewest(2, time.monotonic_ns()) == 1
    a.changed(+1)
    assert a.paused and aPort not in aReactor.readers
    a.changed(-1)
    assert not a.paused and aPort in aReactor.readers


def test_aloneAWorkerOnlyCounts(table: Table) -> None:
    held = [0]
    lone, fdset, port = worker(table, 100, held)
    lone.start()
    for _ in range(50):
        lone.changed(+1)
    assert not lone.paused and lone.allowance is None and port in fdset.readers
    other, _, _ = worker(table, 200, [0])
    other.start()
    assert table.fewest(2, time.monotonic_ns()) == 50
