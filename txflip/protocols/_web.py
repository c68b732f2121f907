"""
Draining twisted.web's HTTP/1.x connections, which know nothing of txflip.

The policy, HAProxy's C{idle-close-on-response} applied to a Twisted server:

  - every request that has fully arrived is answered, pipelined ones included;
    the response that leaves with no further request bytes behind it carries
    C{Connection: close}, and the connection closes after it;
  - a response already under way (its headers sent without that header)
    completes; the connection is then treated as idle;
  - an idle keep-alive connection is kept for the idle grace: a request arriving
    then is served with C{Connection: close};
  - after the grace an idle connection is closed: at once, or as soon as the
    response it is sending completes (never while part of a request has arrived).

Closing idle keep-alive connections at once would race the client's next request:
a client that does not retry would see that request fail.  HTTP/2 connections
drain with a two-phase GOAWAY (L{txflip.protocols._h2}).  A resource that streams
hears of the drain through L{txflip.whenDraining}.

twisted.web has no public API for any of this.  We wrap two of C{HTTPChannel}'s
public methods on the draining instance (C{writeHeaders}, which every response's
headers pass through, and C{requestDone}), and read what has arrived but is not
yet parsed from its private buffers: those reads live in L{_unparsed} and
L{_busy} alone, and C{tests/test_web.py} checks that the attributes still exist.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from twisted.python.components import registerAdapter
from twisted.web.http import HTTPChannel
from twisted.web.http import _GenericHTTPChannelProtocol as _Negotiating
from zope.interface import implementer

from txflip.drain._cork import cork
from txflip.drain._tracker import IDrainable
from txflip.protocols._webdraining import announce

#: The private attributes of HTTPChannel (and its LineReceiver base) we read.
PRIVATE = ("_buffer", "_dataBuffer", "_handlingRequest")


def _unparsed(channel: HTTPChannel) -> bool:
    """
    Whether bytes of a further request have arrived: buffered while a request is
    handled (C{_dataBuffer}), or not yet split into lines (C{_buffer}).  After a
    request with a body, C{_dataBuffer} holds an empty chunk: that is no request.
    """
    return any(channel._dataBuffer) or bool(channel._buffer)


def _busy(channel: HTTPChannel) -> bool:
    """
    Whether a request is being received, handled, or answered.
    """
    handling: bool = channel._handlingRequest
    return bool(channel.requests) or handling or _unparsed(channel)


class _Draining:
    """
    The drain state of one channel, made once by L{DrainHTTPChannel.startDraining}.
    """

    def __init__(self, channel: HTTPChannel) -> None:
        self.channel = channel
        self.graceOver = False
        self._writeHeaders = channel.writeHeaders
        self._requestDone = channel.requestDone
        channel.writeHeaders = self.writeHeaders  # type: ignore[method-assign]
        channel.requestDone = self.requestDone  # type: ignore[method-assign]

    def writeHeaders(
        self, version: bytes, code: bytes, reason: bytes, headers: Any
    ) -> None:
        """
        The last response of this connection is the one with no request behind it:
        say so in its headers, and close after it.
        """
        if not _unparsed(self.channel):
            headers.setRawHeaders(b"connection", [b"close"])
            self.channel.persistent = False
        self._writeHeaders(version, code, reason, headers)

    def requestDone(self, request: Any) -> None:
        if not self.channel.persistent:
            # HTTPChannel closes now, after the response: in one segment with it.
            cork(self.channel.transport)
        self._requestDone(request)
        if self.graceOver:
            self.closeIfIdle()

    def closeIfIdle(self) -> None:
        self.graceOver = True
        channel = self.channel
        if channel.transport is not None and not _busy(channel):
            channel.loseConnection()


_draining: WeakKeyDictionary[HTTPChannel, _Draining] = WeakKeyDictionary()


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

    def _other(self) -> IDrainable | None:
        """
        The drain of the channel negotiated instead of HTTP/1.x (HTTP/2).
        """
        channel = getattr(self._protocol, "_channel", None)
        if channel is None or isinstance(channel, HTTPChannel):
            return None
        return IDrainable(channel, None)

    def startDraining(self) -> None:
        other = self._other()
        if other is not None:
            other.startDraining()
        channel = self._channel
        if channel is not None and channel not in _draining:
            _draining[channel] = _Draining(channel)
            announce(channel)

    def closeIfIdle(self) -> None:
        other = self._other()
        if other is not None:
            other.closeIfIdle()
        channel = self._channel
        if channel is not None and channel in _draining:
            _draining[channel].closeIfIdle()


registerAdapter(DrainHTTPChannel, HTTPChannel, IDrainable)
registerAdapter(DrainHTTPChannel, _Negotiating, IDrainable)
