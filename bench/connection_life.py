"""
What txflip adds to one connection's life, in-process: build the protocol, connect,
one line, half-close, close; through txflip's ConnectionTracker, and through a plain
Factory, same protocol (flipecho's).  Run by steady.py; prints JSON, microseconds.
"""

from __future__ import annotations

import json
import timeit

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocolFactory
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from txflip import ConnectionTracker
from txflip.echo import Echo

REASON = Failure(ConnectionDone())
PEER = IPv4Address("TCP", "127.0.0.1", 50000)


def life(factory: IProtocolFactory) -> None:
    protocol = factory.buildProtocol(PEER)
    assert protocol is not None  # neither factory refuses a connection here
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

            def once(f: IProtocolFactory = factory) -> None:
                life(f)

            seconds = timeit.timeit(once, number=n)
            times[name].append(seconds / n * 1e6)
    print(json.dumps({name: min(values) for name, values in times.items()}))


if __name__ == "__main__":
    main()
