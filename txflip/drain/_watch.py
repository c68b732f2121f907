"""
Protocols watched from the start of their connection.

Most of what a drain needs it learns when the drain starts.  Some of it happened
before: an AMP command received earlier and still being answered must be
answered before the connection closes.  A protocol family that needs this
registers a chooser here: given a protocol class, the watch for its protocols
(or L{None}).  The tracker asks once per protocol class and calls the watch on
each protocol of that class as its connection is built, so other protocols pay
nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from txflip.protocols import registerImported

Watch = Callable[[Any], None]
Chooser = Callable[[type], "Watch | None"]

_choosers: list[Chooser] = []


def watchProtocols(choose: Chooser) -> None:
    """
    Register C{choose}: called with each protocol class (once) before its first
    connection is tracked, it returns what to call on each of its protocols.
    """
    _choosers.append(choose)


def watchFor(kind: type) -> Watch | None:
    """
    The watch for protocols of class C{kind}, if a family has one.
    """
    # Families register on first use (L{txflip.protocols}): a protocol of one
    # exists, so its module is imported, and its chooser must be here before the
    # first connection is watched.
    registerImported()
    for choose in _choosers:
        watch = choose(kind)
        if watch is not None:
            return watch
    return None
