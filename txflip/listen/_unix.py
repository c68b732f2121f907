"""
Serving a shared Unix stream socket without Twisted's Unix port.

Twisted's Unix port unlinks the path and shuts the socket down on
C{stopListening}, and chmods the path when it adopts the socket: each would break
the other generation that shares it.  L{UnixAcceptor} only accepts, and hands each
connection to C{reactor.adoptStreamConnection}.
"""

from __future__ import annotations

import socket

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IReadDescriptor,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txflip._reactor import Reactor

_log = Logger()


@implementer(IReadDescriptor, IListeningPort)
class UnixAcceptor:
    """
    A listening port for a shared Unix stream socket that never unlinks, chmods or
    shuts down the socket: it only accepts, and hands each connection to the
    reactor.
    """

    def __init__(
        self, reactor: Reactor, sock: socket.socket, factory: IProtocolFactory
    ) -> None:
        self._reactor = reactor
        self._sock = sock
        self._factory = factory
        self._listening = False
        #: At most this many accepts per wakeup (as C{tcp.Port}'s).
        self.numberAccepts = 100

    def fileno(self) -> int:
        return self._sock.fileno()

    def logPrefix(self) -> str:
        return f"txflip-unix:{self._sock.getsockname()}"

    def startListening(self) -> None:
        if not self._listening:
            self._listening = True
            self._factory.doStart()
            self._reactor.addReader(self)

    def stopListening(self) -> Deferred[None]:
        if self._listening:
            self._listening = False
            self._reactor.removeReader(self)
            self._factory.doStop()
        return succeed(None)

    def getHost(self) -> IAddress:
        return UNIXAddress(self._sock.getsockname())

    def doRead(self) -> None:
        for _ in range(self.numberAccepts):
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as e:
                # EMFILE and friends: leave the connection queued, try again on the
                # next readiness; the next generation may take it meanwhile.
                _log.warn(
                    "txflip: accept on {path} failed: {e}",
                    path=self._sock.getsockname(),
                    e=e,
                )
                return
            try:
                self._reactor.adoptStreamConnection(
                    conn.fileno(), socket.AF_UNIX, self._factory
                )
            except Exception:  # noqa: BLE001 - one bad connection must not stop us
                _log.failure("txflip: cannot serve a connection on {spec}", spec=self)
            finally:
                conn.close()

    def connectionLost(self, reason: Failure) -> None:
        self.stopListening()
