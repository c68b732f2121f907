"""
The new generation's side of a move: take each connection the old generation sends,
with the I{new} code's protocol for its listener.

For each L{Move}: find this generation's tracker for the listener key, build a
protocol with its factory and give it the state (L{IMovable.importState}).  The
answer goes back at once, for every connection of a read in one message:
I{accepted} (this process can take it) or I{refused} with the reason (unknown
listener, a protocol that does not provide L{IMovable}, a state it cannot read, a
connection gone in transit); a refused connection is still the old generation's,
which drains it.  An accepted connection is served only once the old generation
commits it (L{Commit}): then its protocol is connected to the socket
(C{reactor.adoptStreamConnection}, which calls C{connectionMade}; the reactor
delivers no data before).  Moves still waiting for their commit when the channel
ends were abandoned by the old generation, which serves them: they are dropped.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, IProtocol
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from txflip.move._carry import importState
from txflip.move._movable import ConnectionState, IMovable, StateRefused
from txflip.move._wire import (
    Accepted,
    Commit,
    Frame,
    Move,
    MoveChannel,
    Refused,
    encodeAnswer,
)

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
        self.made: IProtocol | None = None

    def prepare(self, addr: IAddress) -> None:
        """
        Build the protocol and restore its state now, before the commit, so that
        a refusal still leaves the connection to the old generation.
        """
        self.made = self._build(addr)

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:  # type: ignore[override]
        self.built = self.made is not None
        return self.made

    def _build(self, addr: IAddress) -> IProtocol | None:
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
        return protocol


@dataclass
class _Prepared:
    """
    A connection accepted, waiting for the old generation's commit.
    """

    fd: int
    family: int
    arrival: _Arrival


def _peer(sock: socket.socket) -> IAddress:
    """
    The peer address a protocol is built with, as Twisted makes it when it
    adopts the socket.
    """
    if sock.family == socket.AF_INET:
        host, port = sock.getpeername()
        return IPv4Address("TCP", host, port)
    if sock.family == socket.AF_INET6:
        return IPv6Address("TCP", *sock.getpeername()[:2])
    return UNIXAddress(None)


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
        self._prepared: dict[int, _Prepared] = {}
        self._channel = MoveChannel(reactor, sock, self._moves, self._lost)

    def close(self) -> None:
        self._channel.close()

    def _moves(self, frames: list[Frame]) -> None:
        answers: list[tuple[bytes, int | None]] = []
        for frame in frames:
            if isinstance(frame, Commit):
                self._commit(frame.id)
                continue
            if not isinstance(frame, Move):
                continue  # answers are not for us: ignore
            answer = self._prepare(frame)
            if not isinstance(answer, Accepted):
                os.close(frame.fd)
                self.refused += 1
            answers.append((encodeAnswer(answer), None))
        self._channel.send(answers)

    def _prepare(self, move: Move) -> Accepted | Refused:
        tracker = self._trackerFor(move.key)
        if tracker is None or tracker.draining:
            return Refused(move.id, f"no listener {move.key} here")
        try:
            probe = socket.socket(fileno=move.fd)
        except OSError as e:
            return Refused(move.id, f"not a socket: {e}")
        try:
            family, kind = probe.family, probe.type
            if kind != socket.SOCK_STREAM:
                return Refused(move.id, "not a stream socket")
            try:
                peer = _peer(probe)
            except OSError as e:
                # Gone in transit (ENOTCONN), typically: the old generation still
                # holds it and sees the close.
                return Refused(move.id, f"cannot adopt: {e}")
        finally:
            probe.detach()
        arrival = _Arrival(tracker, move.state)
        arrival.prepare(peer)
        if arrival.refused is not None:
            return Refused(move.id, arrival.refused)
        self._prepared[move.id] = _Prepared(move.fd, family, arrival)
        return Accepted(move.id)

    def _commit(self, id: int) -> None:
        """
        The old generation let go of connection C{id}: serve it.
        """
        prepared = self._prepared.pop(id, None)
        if prepared is None:
            return
        self.accepted += 1
        try:
            self._reactor.adoptStreamConnection(
                prepared.fd, prepared.family, prepared.arrival
            )
        except Exception:  # noqa: BLE001 - see below
            if not prepared.arrival.built:
                # Gone since (the client closed): nobody serves it any more.
                self._log.info("txflip: a moved connection closed in transit")
            else:
                # Our protocol is connected and failed in connectionMade: the
                # connection is ours now, like any connection whose protocol
                # failed.
                self._log.failure("txflip: moved connection failed in connectionMade")
        finally:
            os.close(prepared.fd)

    def _lost(self, why: str) -> None:
        abandoned, self._prepared = self._prepared, {}
        for prepared in abandoned.values():
            os.close(prepared.fd)
        self._log.info(
            "txflip: moves channel {why} ({accepted} connections taken over,"
            " {refused} refused{abandoned})",
            why=why,
            accepted=self.accepted,
            refused=self.refused,
            abandoned=f", {len(abandoned)} left to the old generation, which gave"
            " up on them"
            if abandoned
            else "",
        )
