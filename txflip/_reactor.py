"""
The reactor txflip needs, as one typed Protocol, and the one place that falls back
to Twisted's global reactor.

Twisted's reactor interfaces are separate zope interfaces (time, processes, fd
sets, sockets, core); a txflip generation uses a few methods of each.  Naming them
here lets every module be typed against one thing, and a test reactor
(C{MemoryReactorClock}) satisfies it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast

from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProcessProtocol,
    IProcessTransport,
    IProtocolFactory,
    IReadDescriptor,
)
from twisted.internet.protocol import DatagramProtocol


class Clock(Protocol):
    """
    What timeouts need (C{IReactorTime}; a C{task.Clock} in tests).
    """

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object
    ) -> IDelayedCall: ...


class Reactor(Clock, Protocol):
    """
    What txflip calls on a reactor.
    """

    @property
    def running(self) -> bool: ...

    def callWhenRunning(
        self, callable: Callable[..., object], *args: object
    ) -> object: ...

    def callFromThread(
        self, callable: Callable[..., object], *args: object
    ) -> None: ...

    def addSystemEventTrigger(
        self, phase: str, eventType: str, callable: Callable[..., object]
    ) -> object: ...

    def run(self) -> None: ...

    def stop(self) -> None: ...

    def addReader(self, reader: IReadDescriptor) -> None: ...

    def removeReader(self, reader: IReadDescriptor) -> None: ...

    def adoptStreamPort(
        self, fileDescriptor: int, addressFamily: socket.AddressFamily, factory: Any
    ) -> IListeningPort: ...

    def adoptStreamConnection(
        self,
        fileDescriptor: int,
        addressFamily: socket.AddressFamily,
        factory: IProtocolFactory,
    ) -> None: ...

    def adoptDatagramPort(
        self,
        fileDescriptor: int,
        addressFamily: socket.AddressFamily,
        protocol: DatagramProtocol,
        maxPacketSize: int = 8192,
    ) -> IListeningPort: ...

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        path: str | None = None,
        *,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> IProcessTransport: ...


def asReactor(reactor: object) -> Reactor:
    """
    A reactor a user passed (typed by Twisted as one interface or another, the
    global one as none that has everything), as the L{Reactor} txflip needs.
    """
    return cast(Reactor, reactor)


def reactorOrGlobal(reactor: object | None) -> Reactor:
    """
    C{reactor}, or Twisted's global reactor (imported only then: importing it
    installs the default reactor).
    """
    if reactor is not None:
        return asReactor(reactor)
    from twisted.internet import reactor as globalReactor

    return asReactor(globalReactor)
