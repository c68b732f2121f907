"""
The baseline: flipecho's line echo protocol on a plain C{listenTCP}, no txflip.

    BENCH_PORT=8080 twistd -n --pidfile plain.pid -y bench/plain_echo.tac

Upgrading it means restarting it (see tests/naive_server.py --restart).  It imports nothing of
txflip, so that its memory and start-up time are Twisted's alone.
"""

import os

from twisted.application import internet, service
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

MAX_LINE = 1 << 20


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    """
    txflip.echo.Echo without the draining: every complete line written back.
    """

    _pending = b""

    def dataReceived(self, data):
        pending = self._pending + data
        end = pending.rfind(b"\n") + 1
        self._pending = pending[end:]
        if end:
            self.transport.write(pending[:end])
        if len(self._pending) > MAX_LINE:
            self.transport.write(b"error: line too long\n")
            self.transport.loseConnection()

    def readConnectionLost(self):
        if self._pending:
            self.transport.write(self._pending)
            self._pending = b""
        self.transport.loseConnection()

    def writeConnectionLost(self):
        self.transport.loseConnection()


application = service.Application("plain-echo")
internet.TCPServer(
    int(os.environ.get("BENCH_PORT", "8080")),
    Factory.forProtocol(Echo),
    interface="127.0.0.1",
).setServiceParent(application)
