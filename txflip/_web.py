"""
Draining twisted.web's HTTP/1.x connections, which know nothing of txflip.

The policy, HAProxy's C{idle-close-on-response} applied to a Twisted server:

  - a request in flight completes; its response carries C{Connection: close} when
    its headers are not sent yet, and the connection closes after it;
  - a response already under way without that header completes, and the
    connection is treated as idle afterwards;
  - an idle keep-alive connection is kept for the idle grace: a request arriving
    then is served with C{Connection: close};
  - only after the grace is an idle connection closed (never while part of a
    request has arrived).

Closing idle keep-alive connections at once would race the client's next request:
a client that does not retry would see that request fail.  HTTP/2 connections are
left to finish (no GOAWAY yet) and are aborted at the drain timeout.
"""

from __future__ import annotations

from typing import Any

from twisted.python.components import registerAdapter
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol
from zope.interface import implementer

from ._drain import IDrainable


def _closing(request: Any, version: bytes) -> bool:
    """
    C{HTTPChannel.checkPersistence} for a draining channel: every response from
    now on closes the connection, and says so.
    """
    request.responseHeaders.setRawHeaders(b"connection", [b"close"])
    return False


@implementer(IDrainable)
class DrainHTTPChannel:
    def __init__(self, protocol: Any) -> None:
        # Site builds a protocol that negotiates HTTP/1.1 or HTTP/2 and delegates
        # to the channel it picked.
        self._protocol = protocol

    @property
    def _channel(self) -> HTTPChannel | None:
        channel = getattr(self._protocol, "_channel", self._protocol)
        return channel if isinstance(channel, HTTPChannel) else None

    def startDraining(self) -> None:
        channel = self._channel
        if channel is None:
            return
        channel.checkPersistence = _closing  # type: ignore[method-assign]
        pending = [r for r in channel.requests if not r.startedWriting]
        for request in pending:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        if pending and len(pending) == len(channel.requests):
            # Close after the response that says so.  (A response already under
            # way must not close the connection under a pipelined request.)
            channel.persistent = False

    def closeIfIdle(self) -> None:
        channel = self._channel
        if channel is None or channel.requests or channel._handlingRequest:
            return
        if getattr(channel, "_buffer", b""):
            return  # part of a request line has arrived
        channel.loseConnection()


registerAdapter(DrainHTTPChannel, HTTPChannel, IDrainable)
registerAdapter(DrainHTTPChannel, _GenericHTTPChannelProtocol, IDrainable)
