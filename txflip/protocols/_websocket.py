"""
Draining Autobahn's WebSocket server connections, which know nothing of txflip.

A WebSocket that is not moved is closed by the server at a message boundary with
close code 1012 (Service Restart), registered in RFC 6455's registry for exactly
this: the client completes the closing handshake and reconnects at once, to the
new generation.  It is never aborted (a client sees 1006 then, and may back off).

  - once draining starts, the connection closes right after the next message
    that arrives has been handled (its reply written first, by C{onMessage}, or
    when the L{Deferred} C{onMessage} returned fires);
  - when the idle grace is over, a connection in the middle of no message closes
    at once; one in the middle of a message closes after it; one still in its
    opening handshake closes right after it opens.

Autobahn is optional: this module never imports it.  A zope.interface adapter
hook adapts to L{IDrainable} any instance of Autobahn's
C{WebSocketServerProtocol}, which exists only in a process that imported
Autobahn itself (C{WebSocketResource} or a C{WebSocketServerFactory} served
directly by a C{flip:} endpoint both qualify).  A protocol that provides
L{IDrainable} (or L{txflip.IMovable}) itself is left to its own policy.

Autobahn's public C{sendClose} refuses code 1012; its C{sendCloseFrame}, which
C{sendClose} calls, takes any code.  What we read or call of Autobahn beyond its
public API is named in L{PRIVATE}, used in this module only, and
C{tests/protocols/test_websocket_drain.py} checks that it still exists.
"""

from __future__ import annotations

import sys
from typing import Any
from weakref import WeakKeyDictionary

from twisted.internet.defer import Deferred
from zope.interface import implementer
from zope.interface.interface import InterfaceClass, adapter_hooks

from txflip.drain._tracker import IDrainable

#: RFC 6455 §7.4 close code "Service Restart".
SERVICE_RESTART = 1012
REASON = b"service restart"

#: Where Autobahn's server protocol is defined; never imported from here.
MODULE = "autobahn.websocket.protocol"

#: What we use of Autobahn's protocol beyond its documented API (the last ones
#: to move it: L{txflip.protocols._wsmove}).
PRIVATE = (
    *("state", "inside_message", "current_frame", "sendCloseFrame"),
    *("http_request_data", "data", "send_state", "send_queue", "sendData"),
    *("websocket_protocol_in_use", "websocket_extensions_in_use"),
)
#: Where Autobahn's C{WebSocketResource} is defined, and what we read of it.
RESOURCE_MODULE = "autobahn.twisted.resource"
RESOURCE_PRIVATE = ("_factory",)


def _serverProtocolClass() -> type | None:
    """
    Autobahn's C{WebSocketServerProtocol}, if this process imported Autobahn.
    """
    module = sys.modules.get(MODULE)
    return getattr(module, "WebSocketServerProtocol", None)


def isWebSocket(protocol: object) -> bool:
    """
    Whether C{protocol} is an Autobahn WebSocket server protocol.
    """
    kind = _serverProtocolClass()
    return kind is not None and isinstance(protocol, kind)


class _Draining:
    """
    The drain state of one WebSocket connection, made on its first drain call.
    """

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        #: Messages whose handling (a Deferred C{onMessage} returned) is not over.
        self.handling = 0
        self.graceOver = False
        onMessage = protocol.onMessage
        onOpen = protocol.onOpen

        def handleThenClose(payload: bytes, isBinary: bool) -> object:
            self.handling += 1
            try:
                result = onMessage(payload, isBinary)
            except BaseException:
                self._handled()
                raise
            if isinstance(result, Deferred):
                result.addBoth(self._handled)
            else:
                self._handled()
            return result

        def openThenClose() -> object:
            result = onOpen()
            if self.graceOver:
                self.closeIfIdle()
            return result

        protocol.onMessage = handleThenClose
        protocol.onOpen = openThenClose

    def _handled(self, result: object = None) -> object:
        self.handling -= 1
        if not self.handling:
            self.close()
        return result

    def _midMessage(self) -> bool:
        protocol = self.protocol
        return bool(self.handling or protocol.inside_message or protocol.current_frame)

    def closeIfIdle(self) -> None:
        self.graceOver = True
        if not self._midMessage():
            self.close()

    def close(self) -> None:
        """
        Send the close frame with code 1012, if the connection is open; Autobahn
        then completes the closing handshake (or drops the connection at its
        C{closeHandshakeTimeout}).
        """
        protocol = self.protocol
        if protocol.state == protocol.STATE_OPEN:
            protocol.sendCloseFrame(
                code=SERVICE_RESTART, reasonUtf8=REASON, isReply=False
            )


_draining: WeakKeyDictionary[Any, _Draining] = WeakKeyDictionary()


def _state(protocol: Any) -> _Draining:
    state = _draining.get(protocol)
    if state is None:
        state = _draining[protocol] = _Draining(protocol)
    return state


@implementer(IDrainable)
class DrainWebSocket:
    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def startDraining(self) -> None:
        _state(self._protocol)

    def closeIfIdle(self) -> None:
        _state(self._protocol).closeIfIdle()


def _adapt(interface: InterfaceClass, protocol: object) -> object:
    """
    A zope.interface adapter hook: L{DrainWebSocket} for an Autobahn server
    protocol asked for L{IDrainable}, nothing for anything else.
    """
    if interface is IDrainable and isWebSocket(protocol):
        return DrainWebSocket(protocol)
    return None


adapter_hooks.append(_adapt)
