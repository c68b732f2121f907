"""
A plain program serving one of Twisted's framing receivers (or AMP), written as a
txflip user would: no IDrainable, no private attribute.  Used by
C{tests/protocols/test_framing.py}.

Usage: framedapp.py FAMILY PIDFILE MOVING-PORT DRAINING-PORT

FAMILY is line, lineonly, int8, int16, int32, netstring or amp.  On MOVING-PORT
the protocol provides IMovable (its one field, the count of messages it answered,
moves with it); on DRAINING-PORT the same protocol does not, and drains.

Each message M is answered with C{PID COUNT M}; a message that starts with
C{slow} is answered 200 ms later (a Deferred, owed with txflip.replyPending; for
AMP, the responder's Deferred).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.protocols import amp, basic
from zope.interface import implementer

import txflip


class Counting:
    """
    The application's own field (the count of answers), and how it moves.
    """

    count = 0

    def answer(self, message: bytes) -> Deferred[bytes] | bytes:
        self.count += 1
        reply = b"%d %d %s" % (os.getpid(), self.count, message)
        if message.startswith(b"slow"):
            return deferLater(reactor, 0.2, lambda: reply)
        return reply

    def exportState(self) -> txflip.ConnectionState:
        return txflip.ConnectionState(1, b"%d" % self.count)

    def importState(self, state: txflip.ConnectionState) -> None:
        if state.version != 1:
            raise txflip.StateRefused(f"unknown version {state.version}")
        self.count = int(state.data)


def framed(base: Any, send: str) -> type:
    """
    A protocol on C{base} whose handler answers with C{send}.
    """

    class Framed(Counting, base):  # type: ignore[misc]
        def handle(self, message: bytes) -> None:
            answer = self.answer(message)
            write = getattr(self, send)
            if isinstance(answer, Deferred):
                answer.addCallback(write)
                txflip.replyPending(self, answer)
            else:
                write(answer)

        lineReceived = stringReceived = handle

    return Framed


class Echo(amp.Command):
    arguments = [(b"message", amp.String())]
    response = [(b"reply", amp.String())]


class AMPEcho(Counting, amp.AMP):
    @Echo.responder
    def echo(self, message: bytes) -> Any:
        answer = self.answer(message)
        if isinstance(answer, Deferred):
            return answer.addCallback(lambda reply: {"reply": reply})
        return {"reply": answer}


BASES = {
    "line": (basic.LineReceiver, "sendLine"),
    "lineonly": (basic.LineOnlyReceiver, "sendLine"),
    "int8": (basic.Int8StringReceiver, "sendString"),
    "int16": (basic.Int16StringReceiver, "sendString"),
    "int32": (basic.Int32StringReceiver, "sendString"),
    "netstring": (basic.NetstringReceiver, "sendString"),
}


def classes(family: str) -> tuple[type, type]:
    """
    The moving and the draining protocol of C{family}.
    """
    draining = AMPEcho if family == "amp" else framed(*BASES[family])
    moving = implementer(txflip.IMovable)(type("Moving", (draining,), {}))
    return moving, draining


def main(family: str, pidFile: str, movingPort: str, drainingPort: str) -> None:
    txflip.startLogging()
    moving, draining = classes(family)
    service = txflip.UpgradeService(
        txflip.Upgrader(pidFile=pidFile), idleGrace=5.0, drainTimeout=30.0
    )
    for port, kind in ((movingPort, moving), (drainingPort, draining)):
        service.listen(f"tcp:{port}:interface=127.0.0.1", Factory.forProtocol(kind))
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:5])
