"""
Hearing a connection end from its transport, whatever protocol it has by then.

A protocol may hand its connection to another protocol: Autobahn's
C{WebSocketResource} takes the connection over from twisted.web's C{HTTPChannel}
on upgrade by assigning C{transport.protocol} (or the TLS wrapper's
C{wrappedProtocol}).  The protocol txflip put in front to track the connection
is then out of the chain and never hears the close, so a tracker that listens
to its protocol alone counts the connection forever, and a draining generation
waits for it until its drain timeout, and beyond.

The transport is the connection: every way a connection ends (the peer's close,
C{loseConnection}, C{abortConnection}, a move's release) ends in its
C{connectionLost}, which Twisted calls on the instance.  L{follow} wraps that
method on the one transport instance; nothing of Twisted's is changed, and a
transport that cannot be wrapped is followed through its protocol only, as
before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure


def follow(transport: ITransport, onLost: Callable[[], object]) -> bool:
    """
    Call C{onLost} once C{transport} has told its protocol (whichever it is
    then) that the connection is lost.

    @return: whether C{transport} could be followed.
    """
    original: Callable[[Failure], Any] | None = getattr(
        transport, "connectionLost", None
    )
    if original is None:
        return False

    def connectionLost(reason: Failure = connectionDone) -> Any:
        try:
            return original(reason)
        finally:
            onLost()

    try:
        transport.connectionLost = connectionLost  # type: ignore[attr-defined]
    except AttributeError:
        return False
    return True


def currentProtocol(transport: object, tracking: object, wrapped: object) -> object:
    """
    The protocol that serves C{transport}'s connection now: C{wrapped}, the one
    C{tracking} (txflip's wrapper in front of it) was built for, unless the
    connection was handed over to another protocol since (the transport's
    C{protocol}, or C{wrappedProtocol} for a wrapping transport such as TLS,
    which is where Autobahn's C{WebSocketResource} puts its own).
    """
    now = getattr(transport, "wrappedProtocol", None)
    if now is None:
        now = getattr(transport, "protocol", None)
    if now is None or now is tracking:
        return wrapped
    return now
