"""
Moving Autobahn's WebSocket server connections whose protocol opts in.

A WebSocket whose protocol class provides L{txflip.IMovable} (for its own
fields) moves to the new generation between two messages, whether it is served
by a C{WebSocketServerFactory} on a C{flip:} endpoint or by twisted.web's
C{Site} through Autobahn's C{WebSocketResource}.  Its client sees nothing.

What travels beside the application's state, in the framing envelope of
L{txflip.move._carry} (L{WebSocketFraming}):

  - the opening handshake's request as Autobahn parsed it, and the subprotocol
    chosen for it: the new generation's protocol is built by the new code's
    factory and replays that handshake with its output muted, its C{onConnect}
    answered with that subprotocol, and its C{onOpen} not called (the client
    saw the connection open once).  Path, query, headers, peer and subprotocol
    read as they did; no extension is in use;
  - the bytes received and not yet parsed (the start of the next frame's
    header, at most).

The old generation waits for a boundary: open, no message half-received
(fragments included), nothing of a message half-sent, no reply owed
(L{txflip.replyPending}).  A connection that negotiated C{permessage-deflate}
never moves (the compressor's state cannot travel): it drains, and closes with
1012 as one that did not opt in (L{txflip.protocols._websocket}).

Through C{WebSocketResource}, the new generation's C{Site} builds an HTTP
channel for the connection: the resource that serves the handshake's path is
looked up in the new code's resource tree (C{Site.getResourceFor}, with a
request rebuilt from the handshake, without its client's address); unless it is
a C{WebSocketResource} whose factory's protocol provides L{txflip.IMovable},
the move is refused and the old generation closes the connection with 1012.
Once committed, the WebSocket protocol takes the transport over, as the
resource itself does, and the channel never runs.

Autobahn is never imported here: its classes are found in C{sys.modules}, and
what we use of it beyond its documented API is named in
L{txflip.protocols._websocket.PRIVATE} and C{RESOURCE_PRIVATE}.
"""

from __future__ import annotations

import struct
import sys
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes

from twisted.internet.address import IPv4Address
from twisted.logger import Logger
from zope.interface import implementer
from zope.interface.interface import InterfaceClass, adapter_hooks

from txflip.drain._pending import pendingReplies
from txflip.move._carry import IFramingBuffer, importState, split
from txflip.move._movable import CannotMove, ConnectionState, IMovable, StateRefused
from txflip.protocols._websocket import RESOURCE_MODULE, isWebSocket

_log = Logger()

#: Marks the framing buffer of a WebSocket.
WS_MAGIC = b"TXWS"
_HEAD = struct.Struct(">IH")

#: What a replayed handshake must not do, replaced on the instance meanwhile.
_MUTED = ("sendData", "onConnect", "onOpen", "perMessageCompressionAccept")


def encode(handshake: bytes, subprotocol: str | None, rest: bytes) -> bytes:
    """
    A WebSocket's framing buffer: its opening handshake's request, the
    subprotocol chosen for it, the bytes not yet parsed.
    """
    chosen = b"" if subprotocol is None else b"\0" + subprotocol.encode()
    return (
        WS_MAGIC + _HEAD.pack(len(handshake), len(chosen)) + handshake + chosen + rest
    )


def decode(buffered: bytes) -> tuple[bytes, str | None, bytes]:
    """
    The parts L{encode} put in C{buffered}.

    @raise StateRefused: C{buffered} is not a WebSocket's.
    """
    start = len(WS_MAGIC) + _HEAD.size
    if not buffered.startswith(WS_MAGIC) or len(buffered) < start:
        raise StateRefused("not a WebSocket's state")
    handshakeLength, chosenLength = _HEAD.unpack_from(buffered, len(WS_MAGIC))
    end = start + handshakeLength + chosenLength
    if len(buffered) < end:
        raise StateRefused("truncated WebSocket state")
    handshake = buffered[start : start + handshakeLength]
    chosen = buffered[start + handshakeLength : end]
    return handshake, chosen[1:].decode() if chosen else None, buffered[end:]


@implementer(IFramingBuffer)
class WebSocketFraming:
    """
    What an Autobahn server protocol carries beside its application's state.
    """

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def buffered(self) -> bytes | None:
        protocol = self._protocol
        if protocol.state != protocol.STATE_OPEN:
            # Still in its opening handshake (or closing: it ends by itself).
            return None
        if protocol.websocket_extensions_in_use:
            raise CannotMove("permessage-deflate negotiated")
        if protocol.inside_message or protocol.current_frame is not None:
            return None
        if protocol.send_state != protocol.SEND_STATE_GROUND or protocol.send_queue:
            return None
        if pendingReplies(protocol):
            return None
        chosen: str | None = protocol.websocket_protocol_in_use
        return encode(protocol.http_request_data, chosen, protocol.data)

    def restore(self, buffered: bytes) -> None:
        handshake, chosen, rest = decode(buffered)
        protocol = self._protocol
        saved = {
            name: vars(protocol)[name] for name in _MUTED if name in vars(protocol)
        }
        protocol.sendData = _nothing
        protocol.onConnect = lambda request: chosen
        protocol.onOpen = _nothing
        protocol.perMessageCompressionAccept = lambda offers: None
        try:
            protocol.dataReceived(handshake)
        finally:
            for name in _MUTED:
                vars(protocol).pop(name, None)
            vars(protocol).update(saved)
        if protocol.state != protocol.STATE_OPEN:
            # The new code refused the handshake it accepted before (its origin
            # or port checks changed): Autobahn has dropped the connection.
            _log.error(
                "txflip: a moved WebSocket did not open again in the new"
                " generation: {request!r}",
                request=handshake,
            )
            return
        if rest:
            protocol.dataReceived(rest)


def _nothing(*args: object, **kwargs: object) -> None:
    return None


class _Unconnected:
    """
    The transport of the channel a request is rebuilt on, to look up its
    resource before the connection is ours: no address is known yet.
    """

    disconnecting = False

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "0.0.0.0", 0)

    getHost = getPeer


def _resourceFor(site: Any, handshake: bytes) -> object:
    """
    What C{site} serves the handshake's request with, looked up as
    twisted.web's C{Request.process} does.
    """
    from twisted.web.http import HTTPChannel
    from twisted.web.server import Request

    lines = handshake.split(b"\r\n")
    method, uri, _ = lines[0].split(b" ", 2)
    channel = HTTPChannel()
    channel.site = site  # type: ignore[attr-defined]
    channel.transport = _Unconnected()  # type: ignore[assignment]
    request = Request(channel)
    request.method, request.uri = method, uri
    path, _, query = uri.partition(b"?")
    request.path = path
    request.args = parse_qs(query, keep_blank_values=True)
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            request.requestHeaders.addRawHeader(name.strip(), value.strip())
    request.prepath = []
    request.postpath = [unquote_to_bytes(part) for part in path[1:].split(b"/")]
    return site.getResourceFor(request)


def isWebSocketState(state: ConnectionState) -> bool:
    """
    Whether C{state} is a WebSocket's (moved from a C{WebSocketResource}).
    """
    parts = split(state)
    return parts is not None and parts[0].startswith(WS_MAGIC)


def upgradeOnConnect(channel: Any, site: Any, state: ConnectionState) -> None:
    """
    The new generation's C{Site} built C{channel} for a WebSocket moved from a
    C{WebSocketResource}: build its protocol with the factory of the resource
    that now serves its path, restore its state, and have it take the
    connection over from C{channel} once connected.

    @raise StateRefused: no such resource here, or its protocol cannot take
        moved connections.
    """
    parts = split(state)
    assert parts is not None
    handshake, _, _ = decode(parts[0])
    resourceClass = getattr(sys.modules.get(RESOURCE_MODULE), "WebSocketResource", None)
    try:
        resource = _resourceFor(site, handshake)
    except Exception as e:  # any failure refuses the move
        raise StateRefused(f"cannot look its resource up: {e!r}") from e
    if resourceClass is None or not isinstance(resource, resourceClass):
        raise StateRefused("its path is not served by a WebSocketResource here")
    protocol = resource._factory.buildProtocol(None)
    if protocol is None or not isWebSocket(protocol):
        raise StateRefused("the WebSocket factory built no WebSocket protocol")
    if IMovable(protocol, None) is None:
        raise StateRefused("this WebSocket protocol does not provide IMovable")
    importState(protocol, state)

    def connected(transport: Any) -> None:
        del channel.makeConnection
        # As WebSocketResource does (a plain TCP transport: TLS never moves).
        transport.protocol = protocol
        protocol.makeConnection(transport)

    channel.makeConnection = connected


def _adapt(interface: InterfaceClass, protocol: object) -> object:
    """
    A zope.interface adapter hook: L{WebSocketFraming} for an Autobahn server
    protocol asked for L{IFramingBuffer}.
    """
    if interface is IFramingBuffer and isWebSocket(protocol):
        return WebSocketFraming(protocol)
    return None


adapter_hooks.append(_adapt)
