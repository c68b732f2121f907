"""
The baseline server: flipecho's line echo protocol on a plain C{listenTCP}, no
txflip, so that its memory and start-up time are Twisted's alone.

Started two ways, both by a bare C{twistd -n}: as a C{.tac} (C{plain_echo.tac}: no
plugin discovery) and as a twistd plugin (C{plainecho}, L{PLUGIN}: twistd scans
every C{twisted/plugins} directory first, as it does for flipecho), so that a
txflip server's start is compared with the same kind of start.
"""

from __future__ import annotations

from twisted.application import internet, service
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python import usage
from zope.interface import implementer

MAX_LINE = 1 << 20

#: The twistd plugin's source: a benchmark copies it into a C{twisted/plugins}
#: directory of its own (where twistd also writes its C{dropin.cache}).
PLUGIN = """\
from twisted.application.service import ServiceMaker

plainecho = ServiceMaker(
    "plainecho", "bench.plain_echo", "The plain echo baseline.", "plainecho"
)
"""


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    """
    txflip.echo.Echo without the draining: every complete line written back.
    """

    _pending = b""

    def dataReceived(self, data: bytes) -> None:
        pending = self._pending + data
        end = pending.rfind(b"\n") + 1
        self._pending = pending[end:]
        assert self.transport is not None
        if end:
            self.transport.write(pending[:end])
        if len(self._pending) > MAX_LINE:
            self.transport.write(b"error: line too long\n")
            self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        if self._pending:
            self.transport.write(self._pending)
            self._pending = b""
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


def echoService(port: int) -> service.IService:
    """The echo server on C{127.0.0.1:port}."""
    return internet.TCPServer(port, Factory.forProtocol(Echo), interface="127.0.0.1")


class Options(usage.Options):
    """C{twistd plainecho --port N}."""

    optParameters = [["port", "p", 8080, "The port to listen on.", int]]


def makeService(options: Options) -> service.IService:
    """The plugin's service."""
    return echoService(options["port"])
