"""
Moving an Autobahn WebSocket, without processes: what the old generation's
protocol gives at a boundary, and how the new one is rebuilt from it, directly
and through twisted.web's C{WebSocketResource}.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from txflip import ConnectionState, IMovable, StateRefused
from txflip.move._carry import exportState, importState
from txflip.move._movable import CannotMove

HANDSHAKE = (
    b"GET /ws?nick=ann HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, other\r\n"
)
DEFLATE = b"Sec-WebSocket-Extensions: permessage-deflate\r\n"


@implementer(IMovable)
class Counting(WebSocketServerProtocol):
    count = 0
    opened = 0

    def onConnect(self, request: Any) -> str:
        return "chat"

    def onOpen(self) -> None:
        self.opened += 1
        self.sendMessage(b"welcome")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.count += 1
        self.sendMessage(b"%d " % self.count + payload)

    def exportState(self) -> ConnectionState:
        return ConnectionState(7, b"%d" % self.count)

    def importState(self, state: ConnectionState) -> None:
        assert state.version == 7
        self.count = int(state.data)


def acceptDeflate(offers: list[object]) -> object:
    offer = offers[0]
    assert isinstance(offer, PerMessageDeflateOffer)
    return PerMessageDeflateOfferAccept(offer)


def factory(deflate: bool = False) -> WebSocketServerFactory:
    made = WebSocketServerFactory()
    made.protocol = Counting
    if deflate:
        made.setProtocolOptions(perMessageCompressionAccept=acceptDeflate)
    return made


def frame(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    """
    A client's (masked) frame.
    """
    mask = os.urandom(4)
    head = struct.pack("!BB", (0x80 if fin else 0) | opcode, 0x80 | len(payload))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def opened(deflate: bool = False) -> tuple[Any, StringTransport]:
    protocol: Any = factory(deflate).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(HANDSHAKE + (DEFLATE if deflate else b"") + b"\r\n")
    assert protocol.state == protocol.STATE_OPEN
    transport.clear()
    return protocol, transport


def test_aMessageHalfReceivedWaitsThenMoves() -> None:
    """
    While a fragmented message is half-received there is no state to move;
    once it is whole (and answered), the state carries the handshake and the
    application's fields; the new code's protocol is open before any byte, has
    written nothing (no 101, no onOpen's welcome), reads the handshake as the
    old one did, and carries on from the next byte.
    """
    old, transport = opened()
    old.dataReceived(frame(b"hel", fin=False))
    assert exportState(old) is None
    old.dataReceived(frame(b"lo", opcode=0, fin=True))
    assert b"1 hello" in transport.value()
    state = exportState(old)
    assert state is not None and state.version == 7

    new: Any = factory().buildProtocol(None)
    importState(new, state)
    assert new.count == 1  # before any connection
    moved = StringTransport()
    new.makeConnection(moved)
    assert new.state == new.STATE_OPEN
    assert moved.value() == b""
    assert new.opened == 0
    assert new.http_request_path == "/ws"
    assert new.http_request_params == {"nick": ["ann"]}
    assert new.websocket_protocol_in_use == "chat"
    assert new.websocket_extensions_in_use == []
    new.dataReceived(frame(b"again"))
    assert b"2 again" in moved.value()


def test_deflateCannotMove() -> None:
    """
    A connection that negotiated permessage-deflate can never move.
    """
    old, _ = opened(deflate=True)
    assert old.websocket_extensions_in_use
    with pytest.raises(CannotMove):
        exportState(old)


def site(ws: object) -> Site:
    root = Resource()
    root.putChild(b"ws", ws)  # type: ignore[arg-type]
    root.putChild(b"page", Resource())
    return Site(root)


def test_throughWebSocketResource() -> None:
    """
    A WebSocket served by a C{WebSocketResource} arrives at the new
    generation's C{Site}: the channel it builds hands the connection to the
    protocol of the resource that serves the handshake's path now.
    """
    old, _ = opened()
    old.dataReceived(frame(b"one"))
    state = exportState(old)
    assert state is not None

    channel: Any = site(WebSocketResource(factory())).buildProtocol(None)
    IMovable(channel).importState(state)
    moved = StringTransport()
    channel.makeConnection(moved)
    new: Any = moved.protocol  # type: ignore[attr-defined]
    assert isinstance(new, Counting)
    assert new.state == new.STATE_OPEN
    assert moved.value() == b""
    new.dataReceived(frame(b"two"))
    assert b"2 two" in moved.value()


def test_throughAnotherResourceIsRefused() -> None:
    """
    If the new code serves the path with anything but a C{WebSocketResource},
    the move is refused (the old generation closes it with 1012).
    """
    old, _ = opened()
    state = exportState(old)
    assert state is not None
    channel: Any = site(Resource()).buildProtocol(None)
    with pytest.raises(StateRefused):
        IMovable(channel).importState(state)
