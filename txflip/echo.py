"""
flipecho: a line echo server that upgrades gracefully, the demo of txflip.

Each line received is written back.  After an upgrade, a connection moves to the
new generation, with the part of a line received so far (the whole of its state);
if it cannot move, it is closed right after the echo of its last complete line
(reply and FIN leave together), never while part of a line is still to come.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.python import usage
from zope.interface import implementer

from txflip import (
    ConnectionState,
    IDrainable,
    IMovable,
    StateRefused,
    closeWithReply,
)
from txflip._errors import ListenError
from txflip.generation._process import failStartup
from txflip.listen._addresses import parseListen
from txflip.twistd import UpgradeOptions, makeUpgradeService, rootService

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
MAX_LINE = 1 << 20
#: The layout of Echo's moved state: the bytes of a line not yet complete.
STATE_VERSION = 1


@implementer(IDrainable, IMovable, IHalfCloseableProtocol)
class Echo(Protocol):
    """
    Writes back every complete line, as received (delimiter C{\\n}).

    Half-close aware: a client that sends its line and then shuts down its sending
    side (C{nc -N}, C{nc -q 1}) still gets the echo, including a last line without a
    newline; then we close.
    """

    draining = False
    _pending = b""

    def dataReceived(self, data: bytes) -> None:
        pending = self._pending + data
        end = pending.rfind(b"\n") + 1
        self._pending = pending[end:]
        if end:
            self.transport.write(pending[:end])  # type: ignore[union-attr]
        if len(self._pending) > MAX_LINE:
            self.transport.write(b"error: line too long\n")  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif self.draining and end and not self._pending:
            # At a boundary, right after a reply: close with it, in one segment.
            closeWithReply(self.transport)

    def readConnectionLost(self) -> None:
        if self._pending:
            self.transport.write(self._pending)  # type: ignore[union-attr]
            self._pending = b""
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def startDraining(self) -> None:
        self.draining = True

    def closeIfIdle(self) -> None:
        if not self._pending:
            closeWithReply(self.transport)

    def exportState(self) -> ConnectionState | None:
        # Every echo is written as soon as its line is complete: between two
        # reads we are always at a boundary, and a partial line is all we hold.
        return ConnectionState(STATE_VERSION, self._pending)

    def importState(self, state: ConnectionState) -> None:
        if state.version != STATE_VERSION:
            raise StateRefused(f"unknown echo state version {state.version}")
        self._pending = state.data


class EchoDatagram(DatagramProtocol):
    """
    Writes every datagram back to its sender.
    """

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.transport.write(datagram, addr)  # type: ignore[union-attr]


class Options(UpgradeOptions):
    synopsis = "[--listen DESCRIPTION ...] [options]"
    longdesc = (
        "A line echo server that upgrades with zero downtime on SIGHUP and stops"
        " gracefully on SIGQUIT.  Default listener: " + DEFAULT_LISTEN + "."
    )

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """
        Where to listen (repeatable): tcp:PORT[:interface=IP], tcp6:PORT[:interface=IP6],
        unix:PATH[:mode=0666], udp:PORT[:interface=IP], udp6:..., or a socket passed
        by systemd: systemd:name=NAME, systemd:index=N
        """
        try:
            parseListen(description)
        except ListenError as e:
            raise usage.UsageError(str(e)) from None
        self["listen"].append(description)

    opt_l = opt_listen

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        super().postOptions()


def makeService(options: Options) -> IService:
    service = makeUpgradeService(options)
    factory = Factory.forProtocol(Echo)
    try:
        for description in options["listen"]:
            if description.startswith("udp"):
                service.listenDatagram(description, EchoDatagram())
            else:
                service.listen(description, factory)
    except ListenError as e:
        service.upgrader.listeners.close(unlink=False)
        failStartup(str(e))
    return rootService(options, service)
