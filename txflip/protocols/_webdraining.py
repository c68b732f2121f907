"""
Telling a twisted.web resource that streams (server-sent events, long polls) that
its connection is draining.

A streaming response has no boundary txflip can see: left alone it holds the old
generation until the drain timeout, and is then cut.  The resource knows its
boundaries (the end of an event): L{whenDraining} tells it when to end the
stream there, with a C{retry:} hint for C{EventSource} clients, which then
reconnect at once, to the new generation.

The drain adapters of twisted.web's channels announce each connection they start
draining (L{announce}): an HTTP/1.x channel when it drains, or when it is to move
to the next generation but is busy with a response; each stream of an HTTP/2
connection when it drains.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary, WeakSet

from twisted.internet.defer import Deferred, succeed
from twisted.web.iweb import IRequest

#: Deferreds waiting for their connection (or HTTP/2 stream) to drain.
_waiting: WeakKeyDictionary[object, list[Deferred[None]]] = WeakKeyDictionary()
#: Connections (and HTTP/2 streams) that drain.
_draining: WeakSet[object] = WeakSet()


def whenRequestDraining(request: IRequest) -> Deferred[None]:
    """
    A L{Deferred} that fires when the connection of C{request} begins to drain
    (at once if it already does): end the response at its next boundary.

    Cancel it when the response ends first (C{request.notifyFinish()}); it then
    fails with C{CancelledError}.

    @param request: a twisted.web request (HTTP/1.x, or a stream of HTTP/2).
    """
    key = request.channel  # type: ignore[attr-defined]
    if key in _draining:
        return succeed(None)

    def cancel(waiter: Deferred[None]) -> None:
        waiters = _waiting.get(key, [])
        if waiter in waiters:
            waiters.remove(waiter)

    waiter: Deferred[None] = Deferred(cancel)
    _waiting.setdefault(key, []).append(waiter)
    return waiter


def announce(key: object) -> None:
    """
    The connection (an HTTP/1.x channel) or HTTP/2 stream C{key} drains: fire
    what waits for it, now and from now on.
    """
    if key in _draining:
        return
    _draining.add(key)
    for waiter in _waiting.pop(key, []):
        waiter.callback(None)
