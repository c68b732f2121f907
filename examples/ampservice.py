"""
An AMP service: C{Add} answers the sum of two integers, 50 ms later.

    python examples/ampservice.py [PORT] [PIDFILE]   # default 8072, amp.pid

Nothing of txflip's in the protocol: an upgrade answers every command received
(responders' Deferreds included), then closes each connection when no box is
half-arrived.  Add C{txflip.IMovable} (as C{examples/chat.py} does) to move the
connections instead.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.protocols import amp

import txflip


class Add(amp.Command):
    arguments = [(b"a", amp.Integer()), (b"b", amp.Integer())]
    response = [(b"total", amp.Integer())]


class Calculator(amp.AMP):
    @Add.responder
    def add(self, a: int, b: int) -> Deferred[dict[str, int]]:
        return deferLater(reactor, 0.05, lambda: {"total": a + b})


def main(port: str = "8072", pidFile: str = "amp.pid") -> None:
    txflip.startLogging()
    service = txflip.UpgradeService(txflip.Upgrader(pidFile=pidFile))
    service.listen(f"tcp:{port}:interface=127.0.0.1", Factory.forProtocol(Calculator))
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
