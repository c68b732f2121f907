"""
Moving twisted.web's HTTP/1.x connections, which know nothing of txflip.

Between two requests an HTTP/1.1 keep-alive connection holds nothing worth
carrying: no request in flight, nothing received and not yet parsed, nothing of the
last response left in Twisted's buffer (txflip checks that part).  Its state is
empty, and the new generation's C{Site} builds a fresh channel for it: the client
keeps its connection through the upgrade, with no code change for C{flip:} users.

A connection in the middle of I{receiving} a request (an upload in progress, or
headers still arriving) moves at once too: its state is the request's bytes so
far, re-serialized from the parser (L{txflip.protocols._webpartial}), which the
new generation's channel reads before anything from the socket; it parses on
where the client is, and the new code answers.

A request already dispatched to a resource (its body complete) is answered by
the old generation, and the connection moves after it.  One that will close
anyway (not persistent), HTTP/2 and TLS connections do not move and drain as
L{txflip.protocols._web} says.
"""

from __future__ import annotations

from typing import Any

from twisted.python.components import registerAdapter
from twisted.web.http import HTTPChannel
from twisted.web.http import _GenericHTTPChannelProtocol as _Negotiating
from zope.interface import implementer

from txflip.move._carry import deliverOnConnect
from txflip.move._movable import ConnectionState, IMovable, StateRefused
from txflip.protocols._webdraining import announce
from txflip.protocols._webpartial import halfArrived
from txflip.protocols._wsmove import isWebSocketState, upgradeOnConnect

#: An idle keep-alive connection, which carries no bytes.
IDLE = 1
#: A request being received: its bytes so far, for the new channel to read first.
PARTIAL = 2


@implementer(IMovable)
class MoveHTTPChannel:
    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def exportState(self) -> ConnectionState | None:
        # Site's protocol negotiates HTTP/1.1 or HTTP/2 and delegates to the
        # channel it picked.
        channel = getattr(self._protocol, "_channel", self._protocol)
        if not isinstance(channel, HTTPChannel) or channel.transport is None:
            return None
        partial = halfArrived(channel)
        if partial is None:
            # A response that streams must end for the connection to move.
            announce(channel)
            return None
        # The idle timeout must not close the socket while it is in transit.
        channel.resetTimeout()
        if partial:
            return ConnectionState(PARTIAL, partial)
        return ConnectionState(IDLE, b"")

    def importState(self, state: ConnectionState) -> None:
        if isWebSocketState(state):
            site = getattr(self._protocol, "site", None)
            if site is None:
                raise StateRefused("a WebSocket's state, and no Site here")
            upgradeOnConnect(self._protocol, site, state)
        elif state.version == PARTIAL and state.data:
            deliverOnConnect(self._protocol, state.data)
        elif state.version != IDLE or state.data:
            raise StateRefused(f"unknown HTTP channel state version {state.version}")


registerAdapter(MoveHTTPChannel, HTTPChannel, IMovable)
registerAdapter(MoveHTTPChannel, _Negotiating, IMovable)
