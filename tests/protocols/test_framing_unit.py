"""
Unit tests of the framing receivers' drain, with in-memory transports and a fake
clock: the private Twisted attributes read still exist, a drain closes with the
reply and never mid-message, a reply owed holds the close, and the draining
signal fires for the process and for each connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import LineReceiver

import txflip
from txflip.drain import _signal
from txflip.drain._tracker import ConnectionTracker
from txflip.protocols import _framing

ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


def test_privateTwistedApiStillThere() -> None:
    """
    Every private attribute of Twisted's framing receivers (and AMP) txflip reads
    exists in this Twisted; a missing one is named.
    """
    assert _framing.checkPrivateAPI() is None
    _framing.PRIVATE["twisted.protocols.basic.LineReceiver"] += ("_gone",)
    try:
        problem = _framing.checkPrivateAPI(["twisted.protocols.basic.LineReceiver"])
    finally:
        _framing.PRIVATE["twisted.protocols.basic.LineReceiver"] = ("_buffer",)
    assert problem is not None and "LineReceiver._gone" in problem


class Lines(LineReceiver):
    owed: Deferred[bytes] | None = None

    def lineReceived(self, line: bytes) -> None:
        if line == b"later":
            self.owed = Deferred()
            self.owed.addCallback(self.sendLine)
            txflip.replyPending(self, self.owed)
        else:
            self.sendLine(line)


class Closing(StringTransport):
    def loseConnection(self) -> None:
        self.closedAt = len(self.value())
        super().loseConnection()


def connected(clock: Clock) -> tuple[ConnectionTracker, Any, Closing]:
    tracker = ConnectionTracker(Factory.forProtocol(Lines), clock)
    tracked: Any = tracker.buildProtocol(ADDRESS)
    transport = Closing()
    tracked.makeConnection(transport)
    return tracker, tracked, transport


def test_drainClosesWithTheReplyNeverMidMessage() -> None:
    """
    Draining, a half line keeps the connection; its end is answered, and the
    connection closes right after that reply.
    """
    clock = Clock()
    tracker, tracked, transport = connected(clock)
    tracked.dataReceived(b"one\r\ntw")
    tracker.drain(1.0, 30.0)
    clock.advance(2.0)  # the idle grace is over: still half a line
    assert not transport.disconnecting
    tracked.dataReceived(b"o\r\n")
    assert transport.value() == b"one\r\ntwo\r\n"
    assert transport.disconnecting and transport.closedAt == len(b"one\r\ntwo\r\n")


def test_replyOwedHoldsTheClose() -> None:
    """
    A reply owed (txflip.replyPending) keeps the connection open through the
    idle grace; once it is written, the connection closes after it.
    """
    clock = Clock()
    tracker, tracked, transport = connected(clock)
    tracked.dataReceived(b"later\r\n")
    tracker.drain(1.0, 30.0)
    clock.advance(2.0)
    assert not transport.disconnecting
    tracked.wrapped.owed.callback(b"done")
    assert transport.value() == b"done\r\n" and transport.disconnecting


def test_drainingSignalForTheProcessAndEachConnection(monkeypatch: Any) -> None:
    """
    txflip.whenDraining fires once this generation drains, for the process and
    for each connection; txflip.isDraining says the same synchronously.
    """
    monkeypatch.setattr(_signal, "_signal", _signal._Signal())
    clock = Clock()
    tracker, tracked, _ = connected(clock)
    protocol = tracked.wrapped
    process, connection = txflip.whenDraining(), txflip.whenDraining(protocol)
    fired: list[str] = []
    process.addCallback(lambda _: fired.append("process"))
    connection.addCallback(lambda _: fired.append("connection"))
    assert not txflip.isDraining(protocol)
    tracker.drain(1.0, 30.0)
    assert fired == ["process", "connection"]
    assert txflip.isDraining() and txflip.isDraining(protocol)
    assert txflip.whenDraining(protocol).called
