"""
Replies a protocol will send later: how a drain knows not to close yet.

A framing protocol handles a message in its handler (C{lineReceived},
C{stringReceived}, an AMP responder).  When the handler answers at once, the reply
is written before the handler returns, and txflip closes right after it.  When the
answer comes later (a database query, a call to another service: a L{Deferred}),
txflip cannot see it: the application says so with L{replyPending}, giving the
L{Deferred} whose callbacks (added before the call) write the reply.  Until it
fires, the connection is not at a boundary: it is neither closed nor moved.
AMP responders need nothing of this: txflip counts the commands being answered.

The counts live here, keyed by protocol (weakly), so that a protocol carries no
attribute of txflip's and a connection that never drains costs nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar
from weakref import WeakKeyDictionary

from twisted.internet.defer import Deferred

T = TypeVar("T")

_counts: WeakKeyDictionary[object, int] = WeakKeyDictionary()
_observers: WeakKeyDictionary[object, Callable[[], object]] = WeakKeyDictionary()


def replyPending(protocol: object, reply: Deferred[T]) -> Deferred[T]:
    """
    Say that C{protocol} owes its client a reply until C{reply} fires: txflip
    closes (or moves) the connection only after that.

    Add the callbacks that write the reply I{before} calling this: txflip looks
    again once they have run.  The result (or failure) passes through unchanged.

    @param protocol: the protocol of the connection (your C{LineReceiver},
        C{Int32StringReceiver}, ... subclass), usually C{self}.
    @return: C{reply}, for chaining.
    """
    _counts[protocol] = _counts.get(protocol, 0) + 1

    def replied(result: T) -> T:
        left = _counts.get(protocol, 1) - 1
        if left:
            _counts[protocol] = left
        else:
            _counts.pop(protocol, None)
            observer = _observers.get(protocol)
            if observer is not None:
                observer()
        return result

    reply.addBoth(replied)
    return reply


def pendingReplies(protocol: object) -> int:
    """
    How many replies C{protocol} still owes (see L{replyPending}).
    """
    return _counts.get(protocol, 0)


def onReplied(protocol: object, observer: Callable[[], object]) -> None:
    """
    Call C{observer} each time the last reply C{protocol} owes has been written
    (the drain's cue to look for a boundary again).  One observer a protocol.
    """
    _observers[protocol] = observer
