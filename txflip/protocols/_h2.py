"""
Draining twisted.web's HTTP/2 connections with a graceful GOAWAY, in two phases
(RFC 9113 §6.8):

  1. a GOAWAY with the largest stream id (2^31-1) and no error, and a PING: the
     client opens no new stream on this connection (it opens a new connection,
     which the next generation accepts), while streams it opened before it read
     the GOAWAY are still welcome;
  2. when the PING's answer arrives (every stream the client opened before
     reading the first GOAWAY has arrived before it), or after L{FINAL_WAIT} at
     the latest, a GOAWAY with the last stream id received.

Streams in flight complete; the connection closes as soon as the final GOAWAY is
sent and no stream is left, so the old generation exits when its last stream is
done, not at the drain timeout.  Each draining stream is announced to
L{txflip.whenDraining}, so that a resource streaming on it ends at its next
event.

h2's own C{close_connection} cannot send the first GOAWAY: after it, h2 refuses
every frame (the streams in flight could not be answered).  Both GOAWAY frames
are serialized here and written to the transport, beside h2's stream of frames;
h2 never learns of them.  twisted.web's C{H2Connection} lives in a private
module (C{twisted.web._http2}); what we use of it (its h2 connection C{conn},
C{streams}, C{transport}) is named in L{USED}, and
C{tests/protocols/test_h2.py} checks that it is still there.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.python.components import registerAdapter
from zope.interface import implementer

from txflip._reactor import Clock, reactorOrGlobal
from txflip.drain._tracker import IDrainable
from txflip.protocols._webdraining import announce

H2Connection: type | None
try:
    from h2.events import PingAckReceived
    from h2.exceptions import ProtocolError
    from hyperframe.frame import GoAwayFrame
    from twisted.web._http2 import H2Connection
except ImportError:  # twisted.web without HTTP/2 (h2 not installed)
    H2Connection = None

#: The largest stream id: "no stream is refused yet" (RFC 9113 §6.8).
MAX_STREAM_ID = 2**31 - 1
#: The PING's payload, to know its answer.
OPAQUE = b"txflip\x00\x02"
#: If the PING is not answered by then, send the final GOAWAY anyway (seconds).
FINAL_WAIT = 1.0
#: How often a draining connection looks whether its streams are done (seconds).
POLL_INTERVAL = 0.02

#: What we use of twisted.web's H2Connection instances.
USED = ("conn", "streams", "transport")


def goAway(lastStreamID: int) -> bytes:
    """
    A GOAWAY frame without error.
    """
    frame = GoAwayFrame(stream_id=0, last_stream_id=lastStreamID, error_code=0)
    data: bytes = frame.serialize()
    return data


class _Draining:
    """
    The drain of one HTTP/2 connection: made by L{DrainH2Connection}, it sends
    both GOAWAY frames and closes the connection once its streams are done.
    """

    def __init__(self, connection: Any, clock: Clock) -> None:
        self.connection = connection
        self.final = False
        h2 = connection.conn
        receive = h2.receive_data

        def receiveData(data: bytes) -> list[Any]:
            events: list[Any] = receive(data)
            for event in events:
                if isinstance(event, PingAckReceived) and event.ping_data == OPAQUE:
                    clock.callLater(0, self.sendFinal)
            return events

        h2.receive_data = receiveData
        # The PING is in h2's buffer (DrainH2Connection.startDraining): after it.
        connection.transport.write(goAway(MAX_STREAM_ID))
        connection.transport.write(h2.data_to_send())
        self._late: IDelayedCall = clock.callLater(FINAL_WAIT, self.sendFinal)
        self._poll = LoopingCall(self.check)
        self._poll.clock = clock  # type: ignore[assignment]
        self._poll.start(POLL_INTERVAL)

    def sendFinal(self) -> None:
        """
        Every stream the client opened before it read the first GOAWAY has
        arrived: say which was the last one.
        """
        if self.final:
            return
        self.final = True
        if self._late.active():
            self._late.cancel()
        connection = self.connection
        if connection.transport is not None:
            lastStreamID: int = connection.conn.highest_inbound_stream_id
            connection.transport.write(goAway(lastStreamID))
        self.check()

    def check(self) -> None:
        """
        Announce the streams, close once the final GOAWAY is sent and no stream
        is left (or stop, if the connection is gone).
        """
        connection = self.connection
        if connection.transport is None or not getattr(
            connection.transport, "connected", 1
        ):
            self.stop()
            return
        for stream in list(connection.streams.values()):
            announce(stream)
        if self.final and not connection.streams:
            self.stop()
            transport = connection.transport
            # twisted.web registered the connection as its transport's producer:
            # TLS does not close while one is registered.
            transport.unregisterProducer()
            transport.loseConnection()

    def stop(self) -> None:
        if self._poll.running:
            self._poll.stop()
        if self._late.active():
            self._late.cancel()


_draining: WeakKeyDictionary[Any, _Draining] = WeakKeyDictionary()


@implementer(IDrainable)
class DrainH2Connection:
    """
    Adapts twisted.web's H2Connection to L{IDrainable}: draining starts the
    two-phase GOAWAY; the end of the idle grace changes nothing (the connection
    closes once its streams are done, or at the drain timeout).
    """

    #: Where timers run; the global reactor unless a test sets one.
    clock: Clock | None = None

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def startDraining(self) -> None:
        connection = self._connection
        if connection in _draining or connection.transport is None:
            return
        try:
            connection.conn.ping(OPAQUE)
        except ProtocolError:
            # The client sent its own GOAWAY: twisted.web closes the connection.
            return
        _draining[connection] = _Draining(connection, reactorOrGlobal(self.clock))

    def closeIfIdle(self) -> None:
        self.startDraining()


if H2Connection is not None:
    registerAdapter(DrainH2Connection, H2Connection, IDrainable)
