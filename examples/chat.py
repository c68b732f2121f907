"""
A line-based chat server whose users keep their nicknames across upgrades.

    python examples/chat.py [PORT] [PIDFILE]      # default 8070, chat.pid
    nc 127.0.0.1 8070                             # then: /nick alice, hello
    kill -HUP $(cat chat.pid)                     # upgrade: nobody is cut off

A plain C{LineReceiver}: txflip drains it at line boundaries by itself.  Providing
C{txflip.IMovable} (two small methods, the nickname only) makes each connection
move to the new generation instead: txflip carries the half-typed line itself.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

import txflip


@implementer(txflip.IMovable, IHalfCloseableProtocol)
class Chat(LineReceiver):
    factory: ChatRoom
    nickname = b"anonymous"

    def connectionMade(self) -> None:
        self.factory.users.add(self)

    def connectionLost(self, reason: object = None) -> None:
        self.factory.users.discard(self)

    def lineReceived(self, line: bytes) -> None:
        if line.startswith(b"/nick "):
            self.nickname = line[len(b"/nick ") :].strip()
            self.sendLine(b"* you are " + self.nickname)
            return
        for user in self.factory.users:
            user.sendLine(b"<" + self.nickname + b"> " + line)

    # Moving: our own fields only; txflip carries the half-arrived line.
    def exportState(self) -> txflip.ConnectionState:
        return txflip.ConnectionState(1, self.nickname)

    def importState(self, state: txflip.ConnectionState) -> None:
        if state.version != 1:
            raise txflip.StateRefused(f"unknown chat state {state.version}")
        self.nickname = state.data

    # Half-close (nc -N, nc -q 1): answer what arrived, then close with it.
    def readConnectionLost(self) -> None:
        txflip.closeWithReply(self.transport)

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


class ChatRoom(Factory):
    def __init__(self) -> None:
        self.users: set[Chat] = set()

    def buildProtocol(self, addr: object) -> Chat:
        chat = Chat()
        chat.factory = self
        return chat


def main(port: str = "8070", pidFile: str = "chat.pid") -> None:
    txflip.startLogging()
    service = txflip.UpgradeService(txflip.Upgrader(pidFile=pidFile), idleGrace=5)
    service.listen(f"tcp:{port}:interface=127.0.0.1", ChatRoom())
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
