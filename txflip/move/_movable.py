"""
The interface a protocol implements so that its connection moves to the next
generation instead of being closed.

Moving is the only way to end a long-lived connection without racing its client:
the socket itself goes to the new process (same kernel socket, so bytes the client
sends meanwhile wait in its receive buffer), together with whatever the protocol
says it needs to carry on.  The protocol decides what that is and when it can be
taken (L{IMovable.exportState}); the new code decides whether it can read it
(L{IMovable.importState}).  Everything else (the socket, Twisted's buffers, the
timing, what happens when anything fails) is txflip's job.
"""

from __future__ import annotations

from typing import NamedTuple

from twisted.internet.error import ConnectionDone
from zope.interface import Interface

from txflip.protocols import adaptedLazily

#: States larger than this are not moved (the connection drains instead): a state
#: is meant to be the little a protocol holds between two requests.
MAX_STATE = 16 * 1024 * 1024


class ConnectionState(NamedTuple):
    """
    What a protocol hands to its successor.

    @ivar version: chosen by the protocol, so that new code can tell which layout
        of C{data} it is reading (0 .. 2**32-1).
    @ivar data: the bytes of the state (a partial line, a session id, ...).
    """

    version: int
    data: bytes


class StateRefused(Exception):
    """
    Raised by L{IMovable.importState}: this code cannot carry on from that state.
    The connection then stays with the old generation, which drains it.
    """


class CannotMove(Exception):
    """
    Raised by L{txflip.move._carry.IFramingBuffer.buffered}: this connection
    can never move (its framing holds state that cannot travel, such as a
    compressor's); it drains in the old generation, at once, as a connection
    whose protocol does not provide L{IMovable} would.
    """


class ConnectionMoved(ConnectionDone):
    """
    The reason given to C{connectionLost} in the old generation once the connection
    has moved: it lives on in the new generation (nothing was closed).
    """

    def __str__(self) -> str:
        return "Connection moved to the next generation."


class IMovable(Interface):
    """
    A protocol whose connection can move to the next generation.

    Provide it directly or through an adapter registered with
    C{twisted.python.components.registerAdapter} (txflip does so for twisted.web's
    HTTP/1.1 channels).
    """

    def exportState() -> ConnectionState | None:
        """
        Called in the old generation, once it drains, and again every few
        milliseconds until the connection moves.  Return the state if the
        connection is at a boundary now (nothing half-processed, no producer of
        yours streaming), or L{None} for "not now".

        Do not change the protocol: the move may still be refused, and then this
        protocol carries on (and drains).  txflip stops reading the connection
        right after; until C{connectionLost(L{ConnectionMoved})} (moved) or more
        data (refused), do not write to it.  Unsent bytes in Twisted's write buffer
        are txflip's concern: it only asks once they are flushed.
        """

    def importState(state: ConnectionState) -> None:
        """
        Called in the new generation on a protocol just built by the new code's
        factory for that listener, before C{connectionMade} and before any data:
        carry on from C{state}.  (C{connectionMade} follows as for any
        connection; it can tell a moved connection by this call.)

        @raise StateRefused: this code cannot read that state (an unknown
            version, say); the connection goes back to the old generation.
        """


# twisted.web's adapters and others: registered on first use (txflip.protocols).
adaptedLazily(IMovable)
