"""
The old generation's side of a move: while it drains, hand each movable connection
to the new generation at its next boundary.

A connection is I{offered} by its L{ConnectionTracker} when the drain begins (or
when it is accepted after that).  The mover takes it if its protocol provides
L{IMovable} and its transport can move (plain TCP or Unix, not TLS); otherwise the
tracker drains it as before.  Then, at once and every few milliseconds after:

  1. I{boundary}: Twisted's write buffer is empty and the protocol gives its state
     (L{IMovable.exportState} is not L{None});
  2. I{in transit}: we stop reading it and send its socket and state; it stays
     ours (open, paused) until the new generation answers;
  3. I{accepted}: we let go of the socket without shutting it down
     (L{release}) and send the commit that lets the new generation serve it
     (L{txflip.move._wire}: a move is all or nothing); the protocol sees
     C{connectionLost(ConnectionMoved)}; I{refused}: we read it again and it
     drains here, as if it had never been offered.

A connection that comes back to drain here (refused, or the channel gave up) has
what arrived meanwhile read at once, before any idle check can close it.

Whatever goes wrong goes back to draining, never to a lost connection: a channel
that breaks brings every connection in transit back (we still hold each one); a
connection that reaches no boundary within the idle grace drains; at the drain
timeout the channel is closed first, so that no connection another process may
serve is aborted here.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from txflip.move._carry import exportState
from txflip.move._movable import CannotMove, IMovable
from txflip.move._transport import movableSocket, readPending, release, unsentBytes
from txflip.move._wire import (
    Accepted,
    Commit,
    Frame,
    Move,
    MoveChannel,
    encodeAnswer,
    encodeMove,
)

if TYPE_CHECKING:
    from txflip.drain._tracker import ConnectionTracker, _Tracked

#: How often connections not yet at a boundary are looked at again.
POLL_INTERVAL = 0.002
#: A new generation that has not answered for a connection within this many
#: seconds is not taking any: the channel is closed, and they all drain here.
ANSWER_TIMEOUT = 5.0


class ChannelMover:
    """
    Moves connections of several trackers through one channel.

    @param keys: the listener key of each tracker whose connections may move
        (the new generation finds the same listener by it).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        sock: socket.socket,
        keys: Mapping[ConnectionTracker, str],
    ) -> None:
        self._reactor = reactor
        self._keys = dict(keys)
        self._channel = MoveChannel(reactor, sock, self._answers, self._lost)
        self._waiting: dict[_Tracked, ConnectionTracker] = {}
        self._transit: dict[int, tuple[ConnectionTracker, _Tracked, float]] = {}
        self._inTransit: set[_Tracked] = set()
        self._ids = itertools.count(1)
        self._call: Any = None
        self.moved = 0
        self.refused = 0
        #: When the first connection was offered, and the last one accepted.
        self.startedAt: float | None = None
        self.finishedAt: float | None = None

    def offer(self, tracker: ConnectionTracker, tracked: _Tracked) -> bool:
        """
        Take C{tracked} to move it, or say no (then the tracker drains it).
        """
        if not self._channel.open or tracker not in self._keys:
            return False
        if IMovable(tracked.servingProtocol(), None) is None:
            return False
        if movableSocket(tracked.transport) is None:
            return False
        if self.startedAt is None:
            self.startedAt = self._reactor.seconds()
        self._waiting[tracked] = tracker
        self._schedule(0)
        return True

    def holds(self, tracked: _Tracked) -> bool:
        """
        Whether C{tracked} is ours for now (waiting for a boundary, or in transit).
        """
        return tracked in self._waiting or tracked in self._inTransit

    def giveUp(self, tracker: ConnectionTracker) -> None:
        """
        The idle grace is over: C{tracker}'s connections that reached no boundary
        drain.
        """
        for tracked, owner in list(self._waiting.items()):
            if owner is tracker:
                del self._waiting[tracked]
                tracker.fallBack(tracked)

    @property
    def took(self) -> float:
        """
        Seconds from the first offer to the last connection accepted.
        """
        if self.startedAt is None or self.finishedAt is None:
            return 0.0
        return self.finishedAt - self.startedAt

    def close(self, why: str = "done") -> None:
        """
        Close the channel; what is still ours drains.
        """
        self._channel.close(why)

    def _schedule(self, delay: float) -> None:
        if self._call is None or not self._call.active():
            self._call = self._reactor.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._call = None
        batch: list[tuple[bytes, int | None]] = []
        for tracked, tracker in list(self._waiting.items()):
            frame = self._take(tracker, tracked)
            if frame is not None:
                batch.append(frame)
        if batch:
            self._channel.send(batch)
        if self._transit:
            oldest = next(iter(self._transit.values()))[2]
            if self._reactor.seconds() - oldest > ANSWER_TIMEOUT:
                self._channel.close(f"gave no answer in {ANSWER_TIMEOUT:g} s")
        if (self._waiting or self._transit) and self._channel.open:
            self._schedule(POLL_INTERVAL)

    def _take(
        self, tracker: ConnectionTracker, tracked: _Tracked
    ) -> tuple[bytes, int] | None:
        """
        If C{tracked} is at a boundary: pause it, put it in transit, return its
        frame and fd.
        """
        transport = tracked.transport
        sock = movableSocket(transport) if tracked.connected else None
        if sock is None:
            # Closing (by its client or its protocol): it drains by itself.
            del self._waiting[tracked]
            if tracked.connected:
                tracker.fallBack(tracked)
            return None
        if unsentBytes(transport):
            return None
        try:
            state = exportState(tracked.servingProtocol())
            if state is None:
                return None
            id = next(self._ids)
            frame = encodeMove(id, self._keys[tracker], state)
        except CannotMove as e:
            self._log.info(
                "txflip: {protocol} cannot move ({why}): it drains here",
                protocol=tracked.servingProtocol(),
                why=e,
            )
            del self._waiting[tracked]
            tracker.fallBack(tracked)
            return None
        except Exception:  # noqa: BLE001 - one protocol's bug must not stop the rest
            self._log.failure("txflip: cannot move {protocol}", protocol=tracked)
            del self._waiting[tracked]
            tracker.fallBack(tracked)
            return None
        transport.pauseProducing()  # type: ignore[union-attr]
        del self._waiting[tracked]
        self._transit[id] = (tracker, tracked, self._reactor.seconds())
        self._inTransit.add(tracked)
        return frame, sock.fileno()

    def _answers(self, frames: list[Frame]) -> None:
        taken: list[tuple[ConnectionTracker, _Tracked]] = []
        commits: list[tuple[bytes, int | None]] = []
        for frame in frames:
            if isinstance(frame, (Move, Commit)):
                if isinstance(frame, Move):
                    os.close(frame.fd)
                self._channel.close("the new generation sent a connection back")
                return
            entry = self._transit.pop(frame.id, None)
            if entry is None:
                continue
            tracker, tracked, _ = entry
            self._inTransit.discard(tracked)
            if isinstance(frame, Accepted):
                taken.append((tracker, tracked))
                commits.append((encodeAnswer(Commit(frame.id)), None))
            else:
                self.refused += 1
                self._log.info(
                    "txflip: move refused by the new generation ({reason}):"
                    " draining that connection here",
                    reason=frame.reason,
                )
                self._comeBack(tracker, tracked)
        # Commit, then let go: once the commit is on its way the new generation
        # serves these, and we never will again.
        self._channel.send(commits)
        for tracker, tracked in taken:
            if not self._channel.open:
                # The commit could not be sent: the connection is still ours.
                self._comeBack(tracker, tracked)
                continue
            self.moved += 1
            release(tracked.transport)
            self.finishedAt = self._reactor.seconds()

    def _comeBack(self, tracker: ConnectionTracker, tracked: _Tracked) -> None:
        tracked.transport.resumeProducing()  # type: ignore[union-attr]
        readPending(tracked.transport)
        tracker.fallBack(tracked)

    def _lost(self, why: str) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        waiting, self._waiting = self._waiting, {}
        transit, self._transit = self._transit, {}
        self._inTransit = set()
        if waiting or transit:
            self._log.warn(
                "txflip: moves channel {why}: {count} connections drain here",
                why=why,
                count=len(waiting) + len(transit),
            )
        for tracker, tracked, _ in transit.values():
            self._comeBack(tracker, tracked)
        for tracked, tracker in waiting.items():
            tracker.fallBack(tracked)
