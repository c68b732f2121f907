"""
Draining: ending every open connection at a clean application boundary.

txflip cannot know where a protocol's requests begin and end, so protocols opt in by
providing L{IDrainable} (directly, or through an adapter registered with
C{twisted.python.components.registerAdapter}).  The contract protects the one thing
that matters: no client loses a message.  A connection is never closed while a
request of its client may be on the wire; it closes I{with a reply} (reply and FIN
leave together), or, when idle for the whole idle grace, at the boundary.

Protocols that do not provide L{IDrainable} are left alone: they are closed by their
clients, or at the drain timeout.

We do not call C{stopProducing}: in Twisted's producer contract it means "your
consumer is gone, stop now", and protocols that implement it (twisted.web's
C{HTTPChannel} among them) abort when it is called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import (
    Interface,
    classImplements,
    directlyProvides,
    implementedBy,
    providedBy,
)

from txflip._reactor import Clock
from txflip._settings import DEFAULT_DRAIN_TIMEOUT, DEFAULT_IDLE_GRACE
from txflip.drain._follow import currentProtocol, follow
from txflip.drain._negotiation import passNegotiation
from txflip.drain._signal import connectionDraining, processDraining
from txflip.drain._watch import Watch, watchFor
from txflip.protocols import adaptedLazily

#: After the drain timeout's aborts, how long until the drain ends anyway.
ABORT_WAIT = 0.5


class IDrainable(Interface):
    """
    A protocol that can end its connection at an application boundary.

    txflip calls L{startDraining} once when the process begins to drain (for a
    connection accepted after that, right after C{connectionMade}), then
    L{closeIfIdle} once when the idle grace is over.  The protocol closes the
    connection itself, with C{transport.loseConnection()}.
    """

    def startDraining() -> None:
        """
        From now on, close the connection right after writing the reply to the
        request in progress, or to the next request if none is in progress (a
        connection that has just been accepted is served its first request, if
        it comes within the idle grace).  Do not close now: the client may be
        sending.
        """

    def closeIfIdle() -> None:
        """
        The idle grace is over.  If no request is in progress (nothing received that
        is not yet answered, not even part of a request), close now; otherwise go on
        and close with the reply.
        """


# twisted.web's adapters and others: registered on first use (txflip.protocols).
adaptedLazily(IDrainable)


class _Tracked(Protocol):
    """
    Sits between the transport and the application's protocol only to learn when the
    connection ends.  The application's protocol is given the real transport, so
    its writes do not pass through here.

    Made by L{_track}, as an instance of a subclass made once per protocol class
    (L{_trackedClass}).
    """

    #: Adapting us (C{IHalfCloseableProtocol(protocol, None)}, which the transport
    #: does) looks up C{__conform__}; answer it here, not through __getattr__.
    __conform__ = None
    #: What the protocol's family watches from the start (L{txflip.drain._watch}).
    _watch: Watch | None = None

    def __init__(self, tracker: ConnectionTracker, wrapped: IProtocol) -> None:
        self._tracker = tracker
        self.wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def makeConnection(self, transport: ITransport) -> None:
        self.transport = transport
        self.connected = 1
        self._tracker._register(self)
        # The connection may outlive us as its protocol (Autobahn): follow it.
        follow(transport, self._transportLost)
        self.wrapped.makeConnection(transport)
        if self._tracker.draining:
            self._tracker._enter(self)

    def dataReceived(self, data: bytes) -> None:
        self.wrapped.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = 0
        try:
            self.wrapped.connectionLost(reason)
        finally:
            self._tracker._unregister(self)

    def servingProtocol(self) -> object:
        """
        The protocol serving the connection now: the one we wrap, or the one it
        handed the connection to.
        """
        return currentProtocol(self.transport, self, self.wrapped)

    def _transportLost(self) -> None:
        self.connected = 0
        self._tracker._unregister(self)


def _forward(name: str) -> Callable[..., Any]:
    def forward(self: _Tracked, *args: Any) -> Any:
        return getattr(self.wrapped, name)(*args)

    forward.__name__ = name
    return forward


#: Methods a transport calls on its protocol, besides those of _Tracked, forwarded
#: by a method rather than by __getattr__ when the protocol class has them.
_FORWARDED = ("__conform__", "readConnectionLost", "writeConnectionLost")

_trackedClasses: dict[type, type[_Tracked]] = {}


def _trackedClass(kind: type) -> type[_Tracked]:
    """
    The subclass of L{_Tracked} for protocols of class C{kind}: it declares what
    C{kind} implements (half-close, TLS handshake notifications, ...), so that the
    transport finds in us whatever it looks for in the protocol.
    """
    cls = _trackedClasses.get(kind)
    if cls is None:
        namespace: dict[str, Any] = {
            name: _forward(name) for name in _FORWARDED if hasattr(kind, name)
        }
        watch = watchFor(kind)
        namespace["_watch"] = None if watch is None else staticmethod(watch)
        cls = type("_Tracked", (_Tracked,), namespace)
        # mypy-zope only knows classes written as class statements.
        classImplements(cls, implementedBy(kind))  # type: ignore[misc]
        _trackedClasses[kind] = cls
    return cls


def _track(tracker: ConnectionTracker, wrapped: IProtocol) -> _Tracked:
    """
    Wrap C{wrapped}.  Declaring interfaces once per protocol class rather than once
    per connection (C{directlyProvides}) keeps the cost of tracking a connection to
    about a microsecond; an instance that provides more than its class still gets
    its own declaration.
    """
    kind = type(wrapped)
    tracked = _trackedClass(kind)(tracker, wrapped)
    if tracked._watch is not None:
        tracked._watch(wrapped)
    provided = providedBy(wrapped)
    if provided is not implementedBy(kind):
        directlyProvides(tracked, provided)
    return tracked


class Mover(TypingProtocol):
    """
    What a drain needs of whatever moves connections to the next generation
    (L{txflip.move} provides it).  Defined here, on the side that uses it, so that
    draining never imports moving: the tracker offers each connection, asks which
    ones are still in transit, and hands the rest back at the end of the idle grace.
    """

    def offer(self, tracker: ConnectionTracker, tracked: _Tracked) -> bool:
        """
        Take C{tracked} to move it; C{False} if it cannot move (then it drains).
        """

    def holds(self, tracked: _Tracked) -> bool:
        """
        Whether C{tracked} is waiting to move or in transit: not ours to close.
        """

    def giveUp(self, tracker: ConnectionTracker) -> None:
        """
        The idle grace is over: hand back every connection of C{tracker} still
        waiting for a boundary, to drain here.
        """

    def close(self, why: str = "done") -> None:
        """
        Stop moving; every connection still held comes back to its tracker.
        """


class ConnectionTracker(Factory):
    """
    A factory wrapper that knows every live connection of the factory it wraps, and
    drains them.
    """

    _log = Logger()

    def __init__(self, wrappedFactory: IProtocolFactory, clock: Clock) -> None:
        self.wrappedFactory = wrappedFactory
        passNegotiation(self, wrappedFactory)
        self._clock = clock
        self._live: set[_Tracked] = set()
        self.draining = False
        self._drained: list[Deferred[int]] = []
        self._calls: list[IDelayedCall] = []
        self._cut = 0
        self._graceOver = False
        #: While draining after an upgrade: what moves connections to the new
        #: generation instead (connections it does not take drain here).
        self.mover: Mover | None = None
        #: Called with +1 / -1 as a connection opens / closes (the balancer's cue).
        self.onChange: Callable[[int], object] | None = None

    def __len__(self) -> int:
        return len(self._live)

    def logPrefix(self) -> str:
        prefix: Callable[[], str] | None = getattr(
            self.wrappedFactory, "logPrefix", None
        )
        return prefix() if prefix is not None else type(self.wrappedFactory).__name__

    def doStart(self) -> None:
        self.wrappedFactory.doStart()

    def doStop(self) -> None:
        self.wrappedFactory.doStop()

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:  # type: ignore[override]
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return _track(self, wrapped)

    def _register(self, tracked: _Tracked) -> None:
        self._live.add(tracked)
        if self.onChange is not None:
            self.onChange(1)

    def _unregister(self, tracked: _Tracked) -> None:
        if tracked not in self._live:
            return  # heard from both its protocol and its transport
        self._live.discard(tracked)
        if self.onChange is not None:
            self.onChange(-1)
        if self.draining and not self._live:
            self._finish()

    def _enter(self, tracked: _Tracked) -> None:
        connectionDraining(tracked.wrapped)
        if self.mover is None or not self.mover.offer(self, tracked):
            self._startDraining(tracked)

    def fallBack(self, tracked: _Tracked) -> None:
        """
        C{tracked} was offered to the mover, which could not move it: drain it
        here, as if it had never been offered.
        """
        if tracked not in self._live:
            return
        self._startDraining(tracked)
        if self._graceOver:
            drainable = IDrainable(tracked.servingProtocol(), None)
            if drainable is not None:
                drainable.closeIfIdle()

    def _startDraining(self, tracked: _Tracked) -> None:
        drainable = IDrainable(tracked.servingProtocol(), None)
        if drainable is None:
            return
        try:
            drainable.startDraining()
        except Exception:  # noqa: BLE001 - one protocol's bug must not stop the rest
            self._log.failure("txflip: cannot drain {protocol}", protocol=tracked)

    def drain(
        self,
        idleGrace: float = DEFAULT_IDLE_GRACE,
        timeout: float = DEFAULT_DRAIN_TIMEOUT,
        mover: Mover | None = None,
    ) -> Deferred[int]:
        """
        Ask every connection to end at its boundary; close idle ones after
        C{idleGrace} seconds; abort what is left after C{timeout} seconds.

        @param mover: offered every connection first; those it takes move to the
            next generation, those it gives back drain.

        @return: fires once no connection is left, with the number that had to be
            aborted at the timeout.
        """
        if self.draining and not self._live:
            return succeed(self._cut)
        waiter: Deferred[int] = Deferred()
        self._drained.append(waiter)
        if self.draining:
            return waiter
        self.draining = True
        self.mover = mover
        processDraining()
        self._log.info("txflip: draining {count} connections", count=len(self._live))
        for tracked in list(self._live):
            self._enter(tracked)
        if not self._live:
            self._finish()
            return waiter
        self._calls = [
            self._clock.callLater(idleGrace, self._idleGraceOver),
            self._clock.callLater(timeout, self._deadline),
        ]
        return waiter

    def _idleGraceOver(self) -> None:
        self._graceOver = True
        mover = self.mover
        for tracked in list(self._live):
            if mover is not None and mover.holds(tracked):
                continue
            drainable = IDrainable(tracked.servingProtocol(), None)
            if drainable is not None:
                drainable.closeIfIdle()
        if mover is not None:
            mover.giveUp(self)

    def _deadline(self) -> None:
        if self.mover is not None:
            # Connections in transit come back to us before anything is aborted:
            # never abort a socket another process may serve.
            self.mover.close("closed at the drain timeout")
        self._cut = len(self._live)
        self._log.warn(
            "txflip: drain timeout: aborting {count} connections", count=self._cut
        )
        for tracked in list(self._live):
            transport: Any = tracked.transport
            abort = getattr(transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                transport.loseConnection()
        # Each abort ends its connection in the next reactor turn; a connection
        # we still count then must not keep the process past its deadline.
        self._calls.append(self._clock.callLater(ABORT_WAIT, self._pastDeadline))

    def _pastDeadline(self) -> None:
        if self._live:
            self._log.warn(
                "txflip: {count} connections not seen closing after the drain"
                " timeout's abort: the drain ends anyway",
                count=len(self._live),
            )
            for tracked in list(self._live):
                self._unregister(tracked)
        self._finish()

    def _finish(self) -> None:
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []
        waiters, self._drained = self._drained, []
        for waiter in waiters:
            waiter.callback(self._cut)


def drainAll(
    trackers: list[ConnectionTracker],
    idleGrace: float,
    timeout: float,
    mover: Mover | None = None,
) -> Deferred[list[int]]:
    """
    Drain several trackers at once (moving what C{mover} takes).
    """
    processDraining()
    if not trackers:
        return succeed([])
    return gatherResults([t.drain(idleGrace, timeout, mover) for t in trackers])
