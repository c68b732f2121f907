"""
Unit tests for txflip.drain._tracker.ConnectionTracker and the flipecho Echo protocol:
draining at a clean boundary, with a fake clock and in-memory transports.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure
from zope.interface import Interface, directlyProvides, implementer

from txflip.drain._tracker import ABORT_WAIT, ConnectionTracker, IDrainable, drainAll
from txflip.echo import MAX_LINE, Echo

GRACE = 1.0
TIMEOUT = 30.0
ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


class Transport(StringTransportWithDisconnection):
    """
    Records writes and closes in order.  Like a real transport, the protocol
    learns it lost the connection on the next reactor turn, not inside
    C{loseConnection}.
    """

    #: The tracking wrapper (its C{wrapped} is the application's protocol).
    protocol: Any

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.events: list[tuple[str, bytes] | str] = []
        self.lostWith: Failure | None = None

    def write(self, data: bytes) -> None:
        assert not self.disconnecting, "write after loseConnection"
        self.events.append(("write", data))
        super().write(data)

    def loseConnection(self) -> None:
        self.events.append("lose")
        self._close(ConnectionDone())

    def abortConnection(self) -> None:
        self.events.append("abort")
        self.aborted = True
        self._close(ConnectionAborted())

    def _close(self, reason: Exception) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.clock.callLater(0, self._lost, Failure(reason))

    def _lost(self, reason: Failure) -> None:
        if self.connected:
            self.connected = False
            self.lostWith = reason
            self.protocol.connectionLost(reason)

    def clientCloses(self) -> None:
        """
        The peer closed the connection.
        """
        self._lost(Failure(ConnectionDone()))

    @property
    def closed(self) -> bool:
        return not self.connected


class NoAbortTransport(Transport):
    abortConnection = None  # type: ignore[assignment]


class Plain(Protocol):
    """
    A protocol that knows nothing about draining.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class Harness:
    def __init__(self, protocol: type[Protocol] = Echo) -> None:
        self.clock = Clock()
        self.factory = Factory.forProtocol(protocol)
        self.tracker = ConnectionTracker(self.factory, self.clock)

    def connect(self, transportType: type[Transport] = Transport) -> Transport:
        tracked = self.tracker.buildProtocol(ADDRESS)
        assert tracked is not None
        transport = transportType(self.clock)
        transport.protocol = tracked
        tracked.makeConnection(transport)
        return transport

    def drain(self) -> Deferred[int]:
        return self.tracker.drain(idleGrace=GRACE, timeout=TIMEOUT)

    def advanceTo(self, when: float) -> None:
        self.clock.advance(when - self.clock.seconds())


def write(data: bytes) -> tuple[str, bytes]:
    return ("write", data)


def result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


# --- Echo without draining ------------------------------------------------------


def test_echoesLines() -> None:
    h = Harness()
    t = h.connect()
    t.protocol.dataReceived(b"hel")
    assert t.events == []
    t.protocol.dataReceived(b"lo\nwor")
    t.protocol.dataReceived(b"ld\n")
    assert t.value() == b"hello\nworld\n"
    assert t.connected and "lose" not in t.events


def test_echoLineTooLong() -> None:
    h = Harness()
    t = h.connect()
    t.protocol.dataReceived(b"x" * (MAX_LINE + 1))
    assert t.events == [write(b"error: line too long\n"), "lose"]


def test_halfCloseEchoesLastPartialLine() -> None:
    h = Harness()
    t = h.connect()
    t.protocol.dataReceived(b"one\nlast")
    t.protocol.readConnectionLost()
    assert t.events == [write(b"one\n"), write(b"last"), "lose"]


def test_halfCloseWithNothingPending() -> None:
    h = Harness()
    t = h.connect()
    t.protocol.dataReceived(b"one\n")
    t.protocol.readConnectionLost()
    assert t.events == [write(b"one\n"), "lose"]


def test_writeSideLostCloses() -> None:
    h = Harness()
    t = h.connect()
    t.protocol.writeConnectionLost()
    assert t.events == ["lose"]


# --- draining semantics -----------------------------------------------------------


def test_idleNotClosedAtDrainStart() -> None:
    h = Harness()
    t = h.connect()
    t.protocol.dataReceived(b"before\n")
    d = h.drain()
    h.advanceTo(GRACE - 0.01)
    assert t.events == [write(b"before\n")]
    assert t.connected
    assert not d.called
    assert t.protocol.wrapped.draining


def test_lineDuringGraceGetsReplyThenClose() -> None:
    h = Harness()
    t = h.connect()
    d = h.drain()
    h.advanceTo(0.5)
    t.protocol.dataReceived(b"question\n")
    assert t.events == [write(b"question\n"), "lose"]
    h.clock.advance(0)
    assert t.closed and t.lostWith is not None and t.lostWith.check(ConnectionDone)
    assert result(d) == 0
    assert len(h.tracker) == 0
    assert h.clock.getDelayedCalls() == []


def test_lineInPiecesDuringGrace() -> None:
    """
    The reply-and-close waits for the end of the line.
    """
    h = Harness()
    t = h.connect()
    h.drain()
    t.protocol.dataReceived(b"que")
    assert t.events == []
    t.protocol.dataReceived(b"stion\n")
    assert t.events == [write(b"question\n"), "lose"]


def test_partialLineAtGraceEndKeepsConnection() -> None:
    h = Harness()
    t = h.connect()
    d = h.drain()
    h.advanceTo(0.5)
    t.protocol.dataReceived(b"par")
    h.advanceTo(GRACE + 5)
    assert t.events == []
    assert t.connected and not d.called
    t.protocol.dataReceived(b"tial\n")
    assert t.events == [write(b"partial\n"), "lose"]
    h.clock.advance(0)
    assert result(d) == 0


def test_partialLineAfterCompleteLineInOneChunk() -> None:
    """
    'a\\nb' while draining: echo a, keep the connection for b, close with b.
    """
    h = Harness()
    t = h.connect()
    h.drain()
    t.protocol.dataReceived(b"a\nb")
    assert t.events == [write(b"a\n")]
    h.advanceTo(GRACE + 1)
    assert t.connected
    t.protocol.dataReceived(b"\n")
    assert t.events == [write(b"a\n"), write(b"b\n"), "lose"]


def test_silentConnectionClosedAtGraceEnd() -> None:
    h = Harness()
    t = h.connect()
    d = h.drain()
    h.advanceTo(GRACE - 0.001)
    assert t.connected
    h.advanceTo(GRACE)
    assert t.events == ["lose"]
    assert t.closed
    assert result(d) == 0


def test_idleAfterEarlierExchangeClosedAtGraceEnd() -> None:
    h = Harness()
    t = h.connect()
    t.protocol.dataReceived(b"one\n")
    d = h.drain()
    h.advanceTo(GRACE)
    assert t.events == [write(b"one\n"), "lose"]
    assert result(d) == 0


def test_multipleLinesInOneChunkAllEchoedBeforeClose() -> None:
    h = Harness()
    t = h.connect()
    h.drain()
    t.protocol.dataReceived(b"a\nb\nc\n")
    assert t.events[-1] == "lose"
    assert b"".join(e[1] for e in t.events if isinstance(e, tuple)) == b"a\nb\nc\n"
    assert t.events.count("lose") == 1


def test_connectionOpenedAfterDrainStartIsDrained() -> None:
    h = Harness()
    first = h.connect()
    d = h.drain()
    h.advanceTo(0.3)
    late = h.connect()
    assert late.protocol.wrapped.draining
    assert len(h.tracker) == 2
    # Its first exchange is served, and it closes with the reply.
    late.protocol.dataReceived(b"hi\n")
    assert late.events == [write(b"hi\n"), "lose"]
    h.advanceTo(GRACE)
    assert first.events == ["lose"]
    assert result(d) == 0


def test_silentLateConnectionClosedAtGraceEnd() -> None:
    h = Harness()
    h.connect()
    d = h.drain()
    h.advanceTo(0.3)
    late = h.connect()
    h.advanceTo(GRACE)
    assert late.events == ["lose"]
    assert result(d) == 0


def test_connectionAfterGraceServedThenClosed() -> None:
    """
    A connection accepted after the idle grace is over is still drained: it is
    served its first exchange and closed with the reply.
    """
    h = Harness()
    h.connect().protocol.dataReceived(b"x")  # keeps the drain going
    h.drain()
    h.advanceTo(GRACE + 1)
    late = h.connect()
    late.protocol.dataReceived(b"late\n")
    assert late.events == [write(b"late\n"), "lose"]


def test_clientClosingDuringDrain() -> None:
    h = Harness()
    t = h.connect()
    t.protocol.dataReceived(b"part")
    d = h.drain()
    h.advanceTo(GRACE + 1)
    assert not d.called
    t.clientCloses()
    assert result(d) == 0
    assert h.clock.getDelayedCalls() == []


def test_drainWithNoConnectionsFiresAtOnce() -> None:
    h = Harness()
    assert result(h.drain()) == 0
    assert h.clock.getDelayedCalls() == []


def test_nonDrainableLeftAloneThenAborted() -> None:
    h = Harness(Plain)
    t = h.connect()
    d = h.drain()
    h.advanceTo(GRACE + 0.5)
    t.protocol.dataReceived(b"still served\n")
    assert t.events == [write(b"still served\n")]
    h.advanceTo(TIMEOUT - 0.01)
    assert t.connected and not d.called
    h.advanceTo(TIMEOUT)
    assert t.events[-1] == "abort"
    assert t.lostWith is not None and t.lostWith.check(ConnectionAborted)
    assert result(d) == 1


def test_deadlineFallsBackToLoseConnection() -> None:
    h = Harness(Plain)
    t = h.connect(NoAbortTransport)
    d = h.drain()
    h.advanceTo(TIMEOUT)
    assert t.events == ["lose"]
    assert result(d) == 1


class Mixed(Factory):
    """
    Builds the protocols of C{kinds} in turn: drainable and not, in one tracker.
    """

    def __init__(self, *kinds: type[Protocol]) -> None:
        self.kinds = list(kinds)

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = self.kinds.pop(0)()
        protocol.factory = self
        return protocol


def test_drainFiresOnlyWhenAllAreGoneWithAbortedCount() -> None:
    h = Harness()
    h.tracker = ConnectionTracker(Mixed(Echo, Echo, Echo, Plain), h.clock)
    idle, chatty, stuck, plain = [h.connect() for _ in range(4)]
    stuck.protocol.dataReceived(b"never finished")
    d = h.drain()
    h.advanceTo(0.5)
    chatty.protocol.dataReceived(b"last\n")
    h.clock.advance(0)
    assert chatty.closed and not d.called
    h.advanceTo(GRACE)
    assert idle.closed
    assert stuck.connected and plain.connected
    h.advanceTo(TIMEOUT - 0.001)
    assert not d.called
    h.advanceTo(TIMEOUT)
    assert stuck.events == ["abort"]
    assert plain.events == ["abort"]
    assert result(d) == 2
    assert len(h.tracker) == 0


def test_drainWaitsForAbortedConnectionsToGo() -> None:
    """
    The aborts are requested at the deadline; drain() fires once the
    connections are really lost.
    """

    class Slow(Transport):
        pendingReason: Failure

        def _close(self, reason: Exception) -> None:
            self.disconnecting = True
            self.pendingReason = Failure(reason)

    h = Harness(Plain)
    t = h.connect(Slow)
    d = h.drain()
    h.clock.advance(TIMEOUT)
    assert t.events == ["abort"] and t.connected
    assert not d.called
    assert isinstance(t, Slow)
    t._lost(t.pendingReason)
    assert result(d) == 1


def test_abortedCountCountsOnlyThoseLeftAtDeadline() -> None:
    h = Harness(Plain)
    stuck = [h.connect() for _ in range(3)]
    d = h.drain()
    h.advanceTo(5)
    stuck[0].clientCloses()
    h.advanceTo(TIMEOUT)
    assert result(d) == 2


def test_drainTwiceWhileDraining() -> None:
    h = Harness()
    t = h.connect()
    first = h.drain()
    second = h.drain()
    assert first is not second
    assert not first.called and not second.called
    t.protocol.dataReceived(b"x\n")
    h.clock.advance(0)
    assert result(first) == 0 and result(second) == 0


def test_drainAgainAfterFinished() -> None:
    h = Harness()
    assert result(h.drain()) == 0
    again = h.drain()
    assert again.called


def test_drainAll() -> None:
    clock = Clock()
    trackers = [ConnectionTracker(Factory.forProtocol(Echo), clock) for _ in range(2)]
    transports = []
    for tracker in trackers:
        tracked = tracker.buildProtocol(ADDRESS)
        assert tracked is not None
        transport = Transport(clock)
        transport.protocol = tracked
        tracked.makeConnection(transport)
        transports.append(transport)
    d = drainAll(trackers, GRACE, TIMEOUT)
    assert not d.called
    clock.advance(GRACE)
    assert result(d) == [0, 0]
    assert result(drainAll([], GRACE, TIMEOUT)) == []


# --- the tracker as a factory wrapper ------------------------------------------------


def test_trackerCountsConnections() -> None:
    h = Harness()
    assert len(h.tracker) == 0
    a, b = h.connect(), h.connect()
    assert len(h.tracker) == 2
    a.clientCloses()
    assert len(h.tracker) == 1
    b.clientCloses()
    assert len(h.tracker) == 0


def test_trackerDelegatesFactoryMethods() -> None:
    events: list[str] = []

    class F(Factory):
        protocol = Echo

        def doStart(self) -> None:
            events.append("start")

        def doStop(self) -> None:
            events.append("stop")

        def logPrefix(self) -> str:
            return "my-prefix"

    tracker = ConnectionTracker(F(), Clock())
    tracker.doStart()
    tracker.doStop()
    assert events == ["start", "stop"]
    assert tracker.logPrefix() == "my-prefix"


def test_trackerRefusedConnection() -> None:
    class Refusing(Factory):
        def buildProtocol(self, addr: Any) -> None:
            return None

    assert ConnectionTracker(Refusing(), Clock()).buildProtocol(ADDRESS) is None


def test_wrappedProtocolGetsRealTransport() -> None:
    h = Harness()
    t = h.connect()
    assert t.protocol.wrapped.transport is t


def test_trackedOffersWrappedInterfaces() -> None:
    @implementer(IHalfCloseableProtocol)
    class HalfClose(Protocol):
        def readConnectionLost(self) -> None:
            self.readLost = True

        def writeConnectionLost(self) -> None:
            pass

    h = Harness(HalfClose)
    t = h.connect()
    tracked = t.protocol
    assert IHalfCloseableProtocol.providedBy(tracked)
    tracked.readConnectionLost()
    assert t.protocol.wrapped.readLost
    assert IDrainable.providedBy(Harness().connect().protocol)


def test_trackedDeclaresNoMoreThanWrapped() -> None:
    """
    Interfaces are declared once per protocol class: a protocol without half-close
    does not look half-closeable, and adapting a tracked protocol works.
    """
    t = Harness(Plain).connect()
    assert not IHalfCloseableProtocol.providedBy(t.protocol)
    assert IHalfCloseableProtocol(t.protocol, None) is None
    assert not hasattr(t.protocol, "readConnectionLost")
    echo = Harness().connect().protocol
    adapted: object = IHalfCloseableProtocol(echo, None)
    assert adapted is echo


def test_trackedInstanceDeclarationsAndConform() -> None:
    """
    What one protocol instance provides beyond its class is offered too, and a
    protocol's own C{__conform__} still answers adaptation.
    """

    class IExtra(Interface):
        pass

    class Conforming(Plain):
        def __init__(self) -> None:
            directlyProvides(self, IExtra)

        def __conform__(self, interface: Any) -> Any:
            return "conformed" if interface is IHalfCloseableProtocol else None

    t = Harness(Conforming).connect()
    assert IExtra.providedBy(t.protocol)
    assert not IExtra.providedBy(Harness(Plain).connect().protocol)
    conformed: object = IHalfCloseableProtocol(t.protocol)
    assert conformed == "conformed"


def test_wrappedConnectionLostErrorStillUnregisters() -> None:
    class Broken(Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            raise RuntimeError("boom")

    h = Harness(Broken)
    t = h.connect()
    d = h.drain()
    with pytest.raises(RuntimeError):
        t.clientCloses()
    assert len(h.tracker) == 0
    assert result(d) == 0


def test_drainEndsAtTheDeadlineWhateverItBelieves() -> None:
    """
    A connection still counted a moment after the drain timeout's abort (its
    close never reached the tracker) does not keep the process: the drain ends.
    """

    class Deaf(Transport):
        def _close(self, reason: Exception) -> None:
            self.disconnecting = True

    h = Harness(Plain)
    h.connect(Deaf)
    d = h.drain()
    h.advanceTo(TIMEOUT)
    assert not d.called
    h.advanceTo(TIMEOUT + ABORT_WAIT)
    assert result(d) == 1
    assert len(h.tracker) == 0


class SwappingTransport(Transport):
    """
    Tells whatever protocol it has when it is lost through its own
    C{connectionLost}, as Twisted's transports do.
    """

    def _lost(self, reason: Failure) -> None:
        if self.connected:
            self.connected = False
            self.lostWith = reason
            self.connectionLost(reason)

    def connectionLost(self, reason: Failure) -> None:
        self.protocol.connectionLost(reason)


def test_aConnectionTakenOverByAnotherProtocolIsStillTracked() -> None:
    """
    Autobahn's WebSocketResource hands the connection to another protocol by
    assigning C{transport.protocol}: its close still ends the drain.
    """
    h = Harness(Plain)
    t = h.connect(SwappingTransport)
    taker = Plain()
    t.protocol = taker
    taker.makeConnection(t)
    d = h.drain()
    t.clientCloses()
    assert result(d) == 0
    assert len(h.tracker) == 0
