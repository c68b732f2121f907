"""
What moving needs from a Twisted transport, in one place, because part of it is
private.

  - Which transports can move: plain TCP and Unix stream connections
    (C{tcp.Server}, C{unix.Server}).  A TLS transport cannot (OpenSSL's session
    lives in this process).
  - Whether Twisted's own write buffer is empty: bytes written but not yet flushed
    are not in the kernel, so they would be lost in a move.  No public API tells;
    we read C{FileDescriptor}'s C{dataBuffer}, C{offset} and C{_tempDataLen}.
    L{checkPrivateAPI} says loudly when a Twisted release changed them (the
    tests call it), and no connection moves then: they all drain.
  - Letting go of a moved socket without touching it: Twisted's own closing calls
    C{shutdown(2)} (or sets C{SO_LINGER} for an abort) on the socket the new
    generation now serves.  L{release} detaches the fd from the socket object
    first, so that whatever Twisted does afterwards is a no-op, then closes our
    fd.  Meanwhile the transport's C{fileno} keeps answering that number (still
    open, so it cannot name anything else): the epoll reactor looks a descriptor
    whose C{fileno()} is -1 up by a linear search, which made 10,000 moves
    quadratic (480 µs a connection at 4,000; 30 µs with this).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import abstract, tcp
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from txflip.move._movable import ConnectionMoved

_log = Logger()
_BUFFER_ATTRIBUTES = ("dataBuffer", "offset", "_tempDataLen")


def _transportClasses() -> tuple[type, ...]:
    classes: list[type] = [tcp.Server]
    try:
        from twisted.internet import unix
    except ImportError:  # pragma: no cover - no Unix sockets on this platform
        pass
    else:
        classes.append(unix.Server)
    return tuple(classes)


_TRANSPORTS = _transportClasses()


def checkPrivateAPI() -> str | None:
    """
    L{None} if the private parts of Twisted we rely on are there; else what changed.
    """
    missing = [
        name
        for name in _BUFFER_ATTRIBUTES
        if not hasattr(abstract.FileDescriptor, name)
        and name not in abstract.FileDescriptor.__init__.__code__.co_names
    ]
    if missing:
        return (
            "twisted.internet.abstract.FileDescriptor has no "
            + ", ".join(missing)
            + ": moving connections is switched off for this Twisted version"
        )
    return None


_PROBLEM = checkPrivateAPI()
if _PROBLEM is not None:  # pragma: no cover - only with a changed Twisted
    _log.critical("txflip: {problem}", problem=_PROBLEM)


def movableSocket(transport: Any) -> socket.socket | None:
    """
    The socket of C{transport} if it is one txflip can move, else L{None}.
    """
    if _PROBLEM is not None or ISSLTransport.providedBy(transport):
        return None
    if not isinstance(transport, _TRANSPORTS):
        return None
    connection: Any = transport
    if connection.disconnecting or not connection.connected:
        return None
    sock = connection.getHandle()
    return sock if isinstance(sock, socket.socket) and sock.fileno() >= 0 else None


def unsentBytes(transport: Any) -> int:
    """
    How many bytes Twisted holds for C{transport}, written but not yet flushed.
    """
    count: int = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return count


def release(transport: Any) -> None:
    """
    The connection now lives in another process: stop serving it here without
    shutting it down, and tell its protocol (C{connectionLost} with
    L{ConnectionMoved}).
    """
    transport.stopReading()
    transport.stopWriting()
    # A registered producer (twisted.web's channel) is not told to stop: the
    # connection goes on, elsewhere.
    transport.producer = None
    fd = transport.getHandle().detach()
    # Twisted's epoll reactor looks a descriptor whose fileno() is -1 up by a
    # linear search (quadratic for 10,000 moves): keep answering our number,
    # still ours (open) until Twisted is done with the transport.
    transport.fileno = lambda: fd
    try:
        transport.connectionLost(Failure(ConnectionMoved()))
    finally:
        os.close(fd)


def readPending(transport: Any) -> None:
    """
    A paused connection comes back to be served here: read what the kernel holds
    for it now (one read), so that its protocol has seen every byte before
    anything decides whether it is idle.  Bytes that arrived while it was in
    transit would otherwise wait for the reactor's next turn, after an idle
    check had closed the connection on them.  An end of file found here is left
    for the reactor to see again (the socket stays readable).
    """
    if transport.connected and not transport.disconnecting:
        transport.doRead()
