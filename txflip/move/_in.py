"""
The new generation's side of a move: take each connection the old generation sends,
with the I{new} code's protocol for its listener.

For each L{Move}: find this generation's tracker for the listener key, build a
protocol with its factory, give it the state (L{IMovable.importState}), and only
then connect it to the socket (C{reactor.adoptStreamConnection}, which calls
C{connectionMade}); the reactor delivers no data before.  The answer goes back at
once, for every connection of a read in one message: I{accepted} (this process
serves it now) or I{refused} with the reason (unknown listener, a protocol that
does not provide L{IMovable}, a state it cannot read, a connection gone in
transit); a refused connection is still the old generation's, which drains it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IAddress, IProtocol
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from txflip.move._carry import importState
from txflip.move._movable import ConnectionState, IMovable, StateRefused
from txflip.move._wire import Accepted, Frame, Move, MoveChannel, Refused, encodeAnswer

if TYPE_CHECKING:
    from txflip.drain._tracker import ConnectionTracker


class _Arrival(Factory):
    """
    Builds the one protocol of a moved connection, with its state restored, when
    C{adoptStreamConnection} asks; says why not otherwise.
    """

    _log = Logger()

    def __init__(self, tracker: ConnectionTracker, state: ConnectionState) -> None:
        self._tracker = tracker
        self._state = state
        self.refused: str | None = None
        self.built = False

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:  # type: ignore[override]
        protocol = self._tracker.buildProtocol(addr)
        if protocol is None:
            self.refused = "the factory refused the connection"
            return None
        movable = IMovable(protocol.wrapped, None)  # type: ignore[attr-defined]
        if movable is None:
            self.refused = "this listener's protocol cannot take moved connections"
            return None
        try:
            importState(protocol.wrapped, self._state)  # type: ignore[attr-defined]
        except StateRefused as e:
            self.refused = f"state refused: {e}" if str(e) else "state refused"
            return None
        except Exception:  # noqa: BLE001 - refuse, the old generation drains it
            self._log.failure("txflip: cannot restore a moved connection")
            self.refused = "restoring the state failed"
            return None
        self.built = True
        return protocol


class Receiver:
    """
    Serves the moves channel of the new generation.

    @param trackerFor: the tracker of the listener with that key, or L{None} if
        this generation has no such listener (or cannot take moves on it).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        sock: socket.socket,
        trackerFor: Callable[[str], ConnectionTracker | None],
    ) -> None:
        self._reactor = reactor
        self._trackerFor = trackerFor
        self.accepted = 0
        self.refused = 0
        self._channel = MoveChannel(reactor, sock, self._moves, self._lost)

    def close(self) -> None:
        self._channel.close()

    def _moves(self, frames: list[Frame]) -> None:
        answers: list[tuple[bytes, int | None]] = []
        for frame in frames:
            if not isinstance(frame, Move):
                continue  # answers are not for us: ignore
            try:
                answer = self._adopt(frame)
            finally:
                os.close(frame.fd)
            if isinstance(answer, Accepted):
                self.accepted += 1
            else:
                self.refused += 1
            answers.append((encodeAnswer(answer), None))
        self._channel.send(answers)

    def _adopt(self, move: Move) -> Accepted | Refused:
        tracker = self._trackerFor(move.key)
        if tracker is None or tracker.draining:
            return Refused(move.id, f"no listener {move.key} here")
        try:
            probe = socket.socket(fileno=move.fd)
        except OSError as e:
            return Refused(move.id, f"not a socket: {e}")
        family, kind = probe.family, probe.type
        probe.detach()
        if kind != socket.SOCK_STREAM:
            return Refused(move.id, "not a stream socket")
        arrival = _Arrival(tracker, move.state)
        try:
            self._reactor.adoptStreamConnection(move.fd, family, arrival)
        except Exception as e:  # noqa: BLE001 - see below
            if not arrival.built:
                # Gone in transit (getpeername: ENOTCONN), typically: the old
                # generation still holds it and sees the close.
                return Refused(move.id, f"cannot adopt: {e}")
            # Our protocol is connected and failed in connectionMade: the
            # connection is ours now, like any connection whose protocol failed.
            self._log.failure("txflip: moved connection failed in connectionMade")
        if arrival.refused is not None:
            return Refused(move.id, arrival.refused)
        return Accepted(move.id)

    def _lost(self, why: str) -> None:
        self._log.info(
            "txflip: moves channel {why} ({accepted} connections taken over,"
            " {refused} refused)",
            why=why,
            accepted=self.accepted,
            refused=self.refused,
        )
