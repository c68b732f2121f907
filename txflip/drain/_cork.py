"""
Closing a connection with its reply so that the reply and the FIN leave in one
segment.

A draining connection is closed right after the reply to a request: a lock-step
client must see the close with the reply, before it sends its next request, or
that request is lost.  Twisted writes the reply and then, a moment later, closes;
the kernel sends the reply at once (TCP_NODELAY, or Nagle with nothing in flight)
and the FIN in a second segment, and a client that reads the reply in between
sends again.  Corking the socket (C{TCP_CORK} on Linux, C{TCP_NOPUSH} on the BSDs
and macOS) before the close makes the kernel hold the reply until the close,
which sends both together.  C{bench/close_segments.py} measures it.
"""

from __future__ import annotations

import socket

from twisted.internet.interfaces import ITransport

#: The option that holds back partial segments, where the platform has one.
CORK = getattr(socket, "TCP_CORK", None) or getattr(socket, "TCP_NOPUSH", None)


def closeWithReply(transport: ITransport | None) -> None:
    """
    Close C{transport} after what was written to it, reply and FIN together when
    it is a TCP connection.

    Use it instead of C{transport.loseConnection()} to end a connection with its
    reply while draining (in L{txflip.IDrainable.startDraining}'s aftermath, or in
    C{closeIfIdle}): a plain C{loseConnection} lets the kernel send the reply and the
    FIN in two segments, and a lock-step client that reads the reply in between
    sends its next request into a closing connection, where it is lost.

    @param transport: a protocol's C{transport}; C{None} (not connected) is
        nothing to close.
    """
    if transport is None:
        return
    cork(transport)
    transport.loseConnection()


def cork(transport: ITransport | None) -> None:
    """
    Hold back partial segments on C{transport}'s socket until it closes (not a TCP
    socket, or no such option here: nothing to do).
    """
    getHandle = getattr(transport, "getHandle", None)
    handle = getHandle() if getHandle is not None else None
    if CORK is None or not isinstance(handle, socket.socket):
        return
    if handle.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        handle.setsockopt(socket.IPPROTO_TCP, CORK, 1)
    except OSError:
        pass  # closed meanwhile: the close is under way anyway
