"""
Twisted's framing receivers drain at message boundaries, and move when the
application says its state can travel, with no code of the application's.

C{LineReceiver}, C{LineOnlyReceiver}, C{Int8/16/32StringReceiver} and
C{NetstringReceiver} (and AMP, L{txflip.protocols._amp}) know where each message
ends.  A protocol derived from one of them:

  - I{drains} (L{IDrainable}): a message that has fully arrived is handled and
    answered; right after the read whose messages left nothing half-arrived and
    no reply owed (L{txflip.replyPending}), the connection closes with the reply
    (reply and FIN in one segment); an idle connection closes when the idle grace
    ends; never while part of a message is buffered;
  - I{moves} when it provides L{IMovable}: its C{exportState} and C{importState}
    carry only its own fields, and the half-arrived message travels beside them
    (L{IFramingBuffer}, L{txflip.move._carry}).

Only the application's own subclasses are concerned: Twisted's protocols built on
these receivers (SMTP, IRC, HTTP, ...) have messages of several lines, or their
own adapters, and are left alone.  A message is one line, one string, one box: a
protocol whose requests span several of them says so by owing a reply
(L{txflip.replyPending}) until the request is complete, or provides
L{IDrainable} itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple
from weakref import WeakKeyDictionary

from twisted.protocols.basic import (
    IntNStringReceiver,
    LineOnlyReceiver,
    LineReceiver,
    NetstringReceiver,
)
from twisted.python.components import registerAdapter
from zope.interface import implementer

from txflip.drain._cork import closeWithReply
from txflip.drain._pending import onReplied, pendingReplies
from txflip.drain._tracker import IDrainable
from txflip.drain._watch import Watch, watchProtocols
from txflip.move._carry import IFramingBuffer
from txflip.protocols._framing import (
    intNBuffer,
    lineBuffer,
    lineOnlyBuffer,
    netstringBuffer,
)

Reader = Callable[[Any], "bytes | None"]


class Family(NamedTuple):
    """
    A framing: how to read what its protocols hold of a message not yet
    complete, and what to watch from the start of a connection (if anything).
    """

    read: Reader
    watch: Watch | None = None


#: The receivers, most derived first.
FAMILIES: list[tuple[type, Family]] = [
    (LineReceiver, Family(lineBuffer)),
    (LineOnlyReceiver, Family(lineOnlyBuffer)),
    (NetstringReceiver, Family(netstringBuffer)),
    (IntNStringReceiver, Family(intNBuffer)),
]

_families: dict[type, Family | None] = {}


def familyOf(kind: type) -> Family | None:
    """
    The framing of protocols of class C{kind} (looked up once per class), or
    L{None}: not a framing receiver, or one of Twisted's own protocols.
    """
    if kind in _families:
        return _families[kind]
    family: Family | None = None
    if "twisted.protocols.amp" in sys.modules:
        # Imported only once the application uses AMP: AMP imports Twisted's
        # TLS layer, which no one else should pay for.
        from txflip.protocols._amp import ampFamily

        found = ampFamily(kind)
        family = None if found is None else Family(*found)
    if family is None and not _twistedOwn(kind):
        family = next((f for base, f in FAMILIES if issubclass(kind, base)), None)
    _families[kind] = family
    return family


def _twistedOwn(kind: type) -> bool:
    return kind.__module__.startswith("twisted.") and kind not in dict(FAMILIES)


def atBoundary(protocol: Any, family: Family) -> bytes | None:
    """
    What C{protocol} holds of a half-arrived message (C{b""}: none) if it is at
    a boundary; L{None} if it is not (a reply owed, a state we cannot read).
    """
    if pendingReplies(protocol):
        return None
    return family.read(protocol)


class _Draining:
    """
    The drain of one connection, made once by L{DrainFramed.startDraining}: after
    each read, and each time the last reply owed is written, close if nothing is
    half-arrived and nothing owed.
    """

    def __init__(self, protocol: Any, family: Family) -> None:
        self.protocol = protocol
        self.family = family
        dataReceived = protocol.dataReceived

        def received(data: bytes) -> object:
            why = dataReceived(data)
            self.closeIfIdle()
            return why

        # On this instance only: a connection that never drains pays nothing.
        protocol.dataReceived = received
        onReplied(protocol, self.closeIfIdle)

    def closeIfIdle(self) -> None:
        transport = self.protocol.transport
        if transport is not None and atBoundary(self.protocol, self.family) == b"":
            closeWithReply(transport)


_draining: WeakKeyDictionary[Any, _Draining] = WeakKeyDictionary()


@implementer(IDrainable)
class DrainFramed:
    def __init__(self, protocol: Any, family: Family) -> None:
        self._protocol = protocol
        self._family = family

    def startDraining(self) -> None:
        if self._protocol not in _draining:
            _draining[self._protocol] = _Draining(self._protocol, self._family)

    def closeIfIdle(self) -> None:
        draining = _draining.get(self._protocol)
        if draining is not None:
            draining.closeIfIdle()


@implementer(IFramingBuffer)
class FramingBuffer:
    def __init__(self, protocol: Any, family: Family) -> None:
        self._protocol = protocol
        self._family = family

    def buffered(self) -> bytes | None:
        return atBoundary(self._protocol, self._family)

    def restore(self, buffered: bytes) -> None:
        self._protocol.dataReceived(buffered)


def _adapter(make: type[DrainFramed] | type[FramingBuffer]) -> Callable[[Any], Any]:
    def adapt(protocol: Any) -> Any:
        family = familyOf(type(protocol))
        return None if family is None else make(protocol, family)

    return adapt


def _watch(kind: type) -> Watch | None:
    family = familyOf(kind)
    return None if family is None else family.watch


for _base, _ in FAMILIES:
    registerAdapter(_adapter(DrainFramed), _base, IDrainable)
    registerAdapter(_adapter(FramingBuffer), _base, IFramingBuffer)
watchProtocols(_watch)
