"""
What Twisted's framing receivers hold of a message not yet complete, read from
their private attributes: the one module of txflip that does.

No public API of C{twisted.protocols.basic} or C{twisted.protocols.amp} says
whether part of a message has arrived, nor gives those bytes.  Draining needs the
first (never close while a message is half-arrived), moving needs the second
(carry them to the next generation, which feeds them to C{dataReceived} again).
Each reader below returns the bytes received and not yet handled, C{b""} at a
boundary, or L{None} when the receiver is in a state txflip cannot carry
(C{LineReceiver}'s raw mode, a paused receiver, a broken netstring peer, AMP
switched to another protocol or starting TLS).

L{checkPrivateAPI} says loudly when a Twisted release changed any of it (the
tests call it; at import a problem is logged as critical), and every reader then
answers L{None}: such connections neither close at a boundary nor move, and end
at the drain timeout.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.protocols.basic import (
    IntNStringReceiver,
    LineOnlyReceiver,
    LineReceiver,
    NetstringReceiver,
)

_log = Logger()

#: The private attributes read, by class (each present once connected).
PRIVATE: dict[str, tuple[str, ...]] = {
    "twisted.protocols.basic.LineReceiver": ("_buffer",),
    "twisted.protocols.basic.LineOnlyReceiver": ("_buffer",),
    "twisted.protocols.basic.IntNStringReceiver": ("_unprocessed",),
    "twisted.protocols.basic.NetstringReceiver": (
        "_state",
        "_remainingData",
        "_payload",
        "_expectedPayloadSize",
        "_PARSING_LENGTH",
    ),
    # Imported only once the application has (it imports Twisted's TLS layer).
    "twisted.protocols.amp.AMP": (
        "_unprocessed",
        "_currentKey",
        "_currentBox",
        "_locked",
        "_startingTLSBuffer",
        "_outstandingRequests",
    ),
}

_AMP = "twisted.protocols.amp.AMP"
_INT16 = struct.Struct("!H")

Reader = Callable[[Any], "bytes | None"]


def _missing(name: str, attributes: tuple[str, ...]) -> list[str]:
    """
    Which of C{attributes} a connected instance of the class C{name} lacks.
    """
    from twisted.internet.testing import StringTransport
    from twisted.python.reflect import namedAny

    kind = namedAny(name)
    instance: Any = kind.__new__(kind)
    try:
        kind.__init__(instance)
        instance.makeConnection(StringTransport())
    except Exception as e:  # noqa: BLE001 - reported as a changed API
        return [f"{kind.__name__} (cannot connect one: {e})"]
    return [f"{kind.__name__}.{a}" for a in attributes if not hasattr(instance, a)]


def checkPrivateAPI(names: list[str] | None = None) -> str | None:
    """
    L{None} if every private attribute read here exists on a connected
    instance of its class (of C{names}, by default all of them); else what
    changed.
    """
    missing = []
    for name in PRIVATE if names is None else names:
        missing += _missing(name, PRIVATE[name])
    if missing:
        return (
            "Twisted's framing receivers changed (no "
            + ", ".join(missing)
            + "): their connections neither drain at a boundary nor move"
        )
    return None


_problems: dict[str, str | None] = {}


def _problem(name: str) -> str | None:
    """
    What changed in class C{name}, checked on first use (logged then, loudly).
    """
    if name not in _problems:
        problem = _problems[name] = checkPrivateAPI([name])
        if problem is not None:  # pragma: no cover - only with a changed Twisted
            _log.critical("txflip: {problem}", problem=problem)
    return _problems[name]


def _guarded(name: str) -> Callable[[Reader], Reader]:
    def guard(reader: Reader) -> Reader:
        def read(protocol: Any) -> bytes | None:
            return None if _problem(name) is not None else reader(protocol)

        read.__doc__ = reader.__doc__
        return read

    return guard


@_guarded("twisted.protocols.basic.LineReceiver")
def lineBuffer(protocol: LineReceiver) -> bytes | None:
    """
    A C{LineReceiver}'s part of a line (L{None} in raw mode, or paused: lines
    may wait unhandled then).
    """
    if not protocol.line_mode or protocol.paused:
        return None
    buffer: bytes = protocol._buffer
    return buffer


@_guarded("twisted.protocols.basic.LineOnlyReceiver")
def lineOnlyBuffer(protocol: LineOnlyReceiver) -> bytes | None:
    """
    A C{LineOnlyReceiver}'s part of a line.
    """
    buffer: bytes = protocol._buffer
    return buffer


@_guarded("twisted.protocols.basic.IntNStringReceiver")
def intNBuffer(protocol: IntNStringReceiver) -> bytes | None:
    """
    An C{Int8/16/32StringReceiver}'s part of a prefix and string (L{None}
    paused: whole strings may wait unhandled then).
    """
    if protocol.paused:
        return None
    buffer: bytes = protocol._unprocessed
    return buffer


@_guarded("twisted.protocols.basic.NetstringReceiver")
def netstringBuffer(protocol: NetstringReceiver) -> bytes | None:
    """
    A C{NetstringReceiver}'s part of a netstring, as it arrived: its length
    prefix is parsed away once complete, and written again here.
    """
    if protocol.brokenPeer:
        return None
    remaining: bytes = protocol._remainingData
    if protocol._state == protocol._PARSING_LENGTH:
        return remaining
    size: int = protocol._expectedPayloadSize - 1  # the comma is counted in
    payload: bytes = protocol._payload.getvalue()
    return b"%d:" % size + payload + remaining


def _string(value: bytes) -> bytes:
    return _INT16.pack(len(value)) + value


@_guarded(_AMP)
def ampBuffer(protocol: Any) -> bytes | None:
    """
    An AMP connection's part of a box, as it arrived: the keys and values
    already parsed, written again, then the part of a key or value (L{None}
    switched to another protocol, or starting TLS).
    """
    if protocol.innerProtocol is not None or protocol._locked or protocol.paused:
        return None
    if protocol._startingTLSBuffer is not None:
        return None
    unprocessed: bytes = protocol._unprocessed
    box = protocol._currentBox
    if not box and protocol.state == "init":
        return unprocessed
    parsed = b"".join(_string(k) + _string(v) for k, v in (box or {}).items())
    if protocol._currentKey is not None:
        parsed += _string(protocol._currentKey)
    return parsed + unprocessed


def ampAwaiting(protocol: Any) -> int:
    """
    How many commands an AMP connection sent and still awaits answers to.
    """
    if _problem(_AMP) is not None:
        return 1
    return len(protocol._outstandingRequests or ())
