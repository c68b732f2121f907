"""
What txflip adds to one connection's life, in-process: build the protocol, connect,
one line, half-close, close; through txflip's ConnectionTracker, and through a plain
Factory, same protocol (flipecho's).  Run by steady.py; prints JSON, microseconds.
"""

from __future__ import annotations

import json
import timeit

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from txflip import ConnectionTracker
from txflip.echo import Echo

REASON = Failure(ConnectionDone())


def life(factory: Factory) -> None:
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(b"hello\n")
    IHalfCloseableProtocol(protocol).readConnectionLost()
    protocol.connectionLost(REASON)


def main(n: int = 50_000) -> None:
    plain = Factory.forProtocol(Echo)
    tracker = ConnectionTracker(Factory.forProtocol(Echo), Clock())
    times: dict[str, list[float]] = {"plain": [], "tracked": []}
    for _ in range(5):
        for name, factory in (("plain", plain), ("tracked", tracker)):
            seconds = timeit.timeit(lambda f=factory: life(f), number=n)
            times[name].append(seconds / n * 1e6)
    print(json.dumps({name: min(values) for name, values in times.items()}))


if __name__ == "__main__":
    main()
