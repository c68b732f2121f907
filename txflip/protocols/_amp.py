"""
AMP connections drain once no command they received is being answered and no
box is half-arrived, and move when the application opts in (L{IMovable}).

AMP answers each command it receives with the result of its responder, often a
L{Deferred}.  txflip watches every AMP connection from its start
(L{txflip.drain._watch}): each command whose answer is not sent at once counts as
a reply owed (L{txflip.drain._pending}) until its answer box is written, so that
answers to commands in flight are sent before the close.  Commands the server
itself sent (C{callRemote}) and still awaits are the application's: until they
are answered the connection is not at a boundary, and a move waits (the reason is
logged once).  Imported by L{txflip.protocols._basic} only once the application
has imported AMP (it imports Twisted's TLS layer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from weakref import WeakSet

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols.amp import AMP

from txflip.drain._pending import replyPending
from txflip.drain._watch import Watch
from txflip.protocols._framing import ampAwaiting, ampBuffer

_log = Logger()
_told: WeakSet[Any] = WeakSet()


def watchCommands(protocol: AMP) -> None:
    """
    From now on, count each command C{protocol} answers later as a reply owed,
    until its answer is written.
    """
    dispatch = protocol.dispatchCommand

    def dispatchCommand(box: Any) -> Deferred[Any]:
        answer: Deferred[Any] = dispatch(box)
        if answer.called:
            # Sent as soon as we return, before the read is over.
            return answer
        # AMP adds the callbacks that send the answer to what we return: relay
        # the answer through it, and only then count the reply as written.
        relayed: Deferred[Any] = Deferred()
        written: Deferred[None] = Deferred()
        replyPending(protocol, written)

        def relay(result: object) -> None:
            relayed.callback(result)
            written.callback(None)

        answer.addBoth(relay)
        return relayed

    protocol.dispatchCommand = dispatchCommand  # type: ignore[method-assign]


def readAMP(protocol: AMP) -> bytes | None:
    """
    The half-arrived box of C{protocol}, or L{None} while commands it sent
    await their answers.
    """
    awaiting = ampAwaiting(protocol)
    if awaiting:
        if protocol not in _told:
            _told.add(protocol)
            _log.info(
                "txflip: {protocol} waits for the answers to {count} commands it"
                " sent before it can close or move",
                protocol=protocol,
                count=awaiting,
            )
        return None
    return ampBuffer(protocol)


def ampFamily(kind: type) -> tuple[Callable[[Any], bytes | None], Watch] | None:
    """
    How to read and what to watch of protocols of class C{kind}, if it is (a
    subclass of) AMP.
    """
    return (readAMP, watchCommands) if issubclass(kind, AMP) else None
