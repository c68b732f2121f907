"""
Carrying a framing protocol's buffer with its connection, so that the
application's own L{IMovable} carries only its own fields.

A protocol built on one of Twisted's framing receivers (a C{LineReceiver}, an
C{Int32StringReceiver}, AMP, ...) holds, between two reads, the part of a message
that has arrived and is not yet complete.  That part belongs to the framing, not
to the application: a protocol family that knows where its framing keeps it
provides L{IFramingBuffer} (an adapter registered by L{txflip.protocols}), and
moving then carries it around the application's state:

  - in the old generation, once the framing is at a boundary
    (L{IFramingBuffer.buffered} is not L{None}), the application's
    C{exportState} is asked, and the state sent is its version with
    C{MAGIC + u32 length + buffered bytes + its data};
  - in the new generation, the application's C{importState} gets its own
    version and data back, and the buffered bytes are given back to the
    framing (L{IFramingBuffer.restore}: to the protocol's C{dataReceived},
    for Twisted's receivers) right after C{connectionMade}, before the reactor
    delivers anything: the framing rebuilds its state through its public
    interface.

A protocol that has no such adapter moves its state unchanged.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from zope.interface import Interface

from txflip.move._movable import ConnectionState, IMovable, StateRefused
from txflip.protocols import adaptedLazily

#: Marks a state carried with its framing buffer.
MAGIC = b"TXFB"
_LENGTH = struct.Struct(">I")


class IFramingBuffer(Interface):
    """
    What a framing protocol holds of a message not yet complete.
    """

    def buffered() -> bytes | None:
        """
        The bytes received and not yet handled (a half-arrived message:
        C{b""} when none), if the protocol is at a boundary; L{None} if it is
        not (a reply is pending, a mode txflip cannot read, ...).

        @raise txflip.move._movable.CannotMove: the connection can never move.
        """

    def restore(buffered: bytes) -> None:
        """
        In the new generation, right after C{connectionMade} and before any
        data: take up the bytes L{buffered} returned in the old generation
        (called only when there are some).
        """


# A family's framing adapters register on first use (L{txflip.protocols}), as its
# drain and move adapters do: a protocol that provides IMovable itself never asks
# for those, so this lookup must be able to register them too.
adaptedLazily(IFramingBuffer)


def exportState(protocol: Any) -> ConnectionState | None:
    """
    The state to move C{protocol}'s connection with, or L{None} for "not now".
    """
    movable = IMovable(protocol)
    framing = IFramingBuffer(protocol, None)
    if framing is None:
        state: ConnectionState | None = movable.exportState()
        return state
    buffered = framing.buffered()
    if buffered is None:
        return None
    own = movable.exportState()
    if own is None:
        return None
    data = MAGIC + _LENGTH.pack(len(buffered)) + buffered + own.data
    return ConnectionState(own.version, data)


def importState(protocol: Any, state: ConnectionState) -> None:
    """
    Restore C{protocol} (just built, not yet connected) from C{state}.

    @raise StateRefused: the application's C{importState} refused it, or the
        state lacks the framing buffer this protocol expects.
    """
    movable = IMovable(protocol)
    framing = IFramingBuffer(protocol, None)
    if framing is None:
        movable.importState(state)
        return
    parts = split(state)
    if parts is None:
        raise StateRefused("no framing buffer in this state")
    buffered, own = parts
    movable.importState(own)
    if buffered:
        afterConnect(protocol, lambda: framing.restore(buffered))


def split(state: ConnectionState) -> tuple[bytes, ConnectionState] | None:
    """
    The framing buffer and the application's own state carried in C{state}, or
    L{None} if C{state} carries no (whole) framing buffer.
    """
    data = state.data
    head = len(MAGIC) + _LENGTH.size
    if data[: len(MAGIC)] != MAGIC or len(data) < head:
        return None
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    if len(data) < head + length:
        return None
    own = ConnectionState(state.version, data[head + length :])
    return data[head : head + length], own


def afterConnect(protocol: Any, then: Callable[[], object]) -> None:
    """
    Call C{then} right after C{protocol}'s C{connectionMade}, before any byte from
    the socket: a moved connection's framing (L{IFramingBuffer.restore}) or parser
    (L{deliverOnConnect}) takes the half-arrived message up where the old
    generation left it.
    """
    makeConnection = protocol.makeConnection

    def connected(transport: Any) -> None:
        del protocol.makeConnection
        makeConnection(transport)
        then()

    protocol.makeConnection = connected


def deliverOnConnect(protocol: Any, buffered: bytes) -> None:
    """
    Give C{buffered} to C{protocol}'s C{dataReceived} right after it is connected
    (L{txflip.protocols._webmove}: the bytes of a request still arriving).
    """
    afterConnect(protocol, lambda: protocol.dataReceived(buffered))
