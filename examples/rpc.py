"""
A length-prefixed RPC server (32-bit length, then the request) that only drains.

    python examples/rpc.py [PORT] [PIDFILE]       # default 8071, rpc.pid

Requests: C{upper TEXT} is answered at once; C{slow TEXT} 200 ms later (as a
database query would be).  Nothing of txflip's in the protocol but one call:
the reply that comes later is owed with C{txflip.replyPending}, so that an
upgrade closes the connection after it, never before.  Without C{IMovable}, an
upgrade closes each connection right after a reply (reply and FIN together);
clients connect again, to the new generation.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.protocols.basic import Int32StringReceiver

import txflip


class RPC(Int32StringReceiver):
    def stringReceived(self, request: bytes) -> None:
        verb, _, text = request.partition(b" ")
        if verb == b"upper":
            self.sendString(text.upper())
        elif verb == b"slow":
            reply = deferLater(reactor, 0.2, text.upper)
            reply.addCallback(self.sendString)
            txflip.replyPending(self, reply)
        else:
            self.sendString(b"error: unknown request " + verb)


def main(port: str = "8071", pidFile: str = "rpc.pid") -> None:
    txflip.startLogging()
    service = txflip.UpgradeService(txflip.Upgrader(pidFile=pidFile))
    service.listen(f"tcp:{port}:interface=127.0.0.1", Factory.forProtocol(RPC))
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
