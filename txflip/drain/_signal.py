"""
The public draining signal: application code learns that this generation is
draining, for one connection or for the whole process, so that it can end its own
long work (a long poll, a stream, a subscription, a background job) at its own
boundary.

txflip ends a connection at a message boundary, but only the application knows
where a stream it is pushing may stop, or that a cache must be flushed before the
process exits.  L{whenDraining} answers with a L{Deferred} that fires once:

  - for the process, when this generation starts to drain (after a successor is
    ready, or on a graceful stop), before any connection is asked to end;
  - for a connection, when txflip starts to end it (or to move it), which is
    right after the process signal, or at once for a connection accepted later.

The tracker (L{txflip.drain._tracker}) calls L{processDraining} and
L{connectionDraining}; nothing else in txflip depends on this module.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary, WeakSet

from twisted.internet.defer import Deferred, succeed


class _Signal:
    """
    One generation's draining state: whether it drains, who waits for it, and
    which connections were told.
    """

    def __init__(self) -> None:
        self.draining = False
        self._process: list[Deferred[None]] = []
        self._told: WeakSet[object] = WeakSet()
        self._connections: WeakKeyDictionary[object, list[Deferred[None]]] = (
            WeakKeyDictionary()
        )

    def whenDraining(self, protocol: object | None) -> Deferred[None]:
        if protocol is None:
            if self.draining:
                return succeed(None)
            waiter: Deferred[None] = Deferred()
            self._process.append(waiter)
            return waiter
        if protocol in self._told:
            return succeed(None)
        waiter = Deferred()
        self._connections.setdefault(protocol, []).append(waiter)
        return waiter

    def isDraining(self, protocol: object | None) -> bool:
        return self.draining if protocol is None else protocol in self._told

    def processDraining(self) -> None:
        if self.draining:
            return
        self.draining = True
        waiters, self._process = self._process, []
        for waiter in waiters:
            waiter.callback(None)

    def connectionDraining(self, protocol: object) -> None:
        if protocol in self._told:
            return
        self._told.add(protocol)
        for waiter in self._connections.pop(protocol, []):
            waiter.callback(None)


_signal = _Signal()


def whenDraining(protocol: object | None = None) -> Deferred[None]:
    """
    A L{Deferred} that fires (with L{None}) once this generation drains: the
    whole process (no argument), or the connection of C{protocol}.

    The process signal is the cue to stop background jobs and flush what must
    outlive this process; a connection's is the cue to end a stream or a long
    poll at the application's own boundary (then reply, and txflip closes the
    connection with that reply, or moves it).  Already draining: it has fired.

    @param protocol: the protocol of a connection txflip serves (the one your
        factory built); L{None} for the process.
    """
    return _signal.whenDraining(protocol)


def isDraining(protocol: object | None = None) -> bool:
    """
    Whether this generation (no argument), or the connection of C{protocol},
    is draining: the synchronous form of L{whenDraining}.
    """
    return _signal.isDraining(protocol)


def processDraining() -> None:
    """
    This generation starts to drain (called by the tracker; idempotent).
    """
    _signal.processDraining()


def connectionDraining(protocol: object) -> None:
    """
    txflip starts to end (or move) the connection of C{protocol} (called by the
    tracker; idempotent).
    """
    _signal.connectionDraining(protocol)
