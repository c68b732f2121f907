"""
Moving connections, as the service does it: take what the previous generation
moves to us once we serve, and move ours to the next generation (or, under
C{txflip run}, to a newer worker) when we stop.

The service keeps its listeners and their trackers; this module decides which of
them may move (not through TLS: the session lives in this process) and finds the
channel to move them over (L{txflip.move._spawn}).

Each side is imported when it is first needed, not with the service: the
receiving side (L{txflip.move._in}) by a generation that inherited a channel,
once it serves; the moving side (L{txflip.move._out}, with its transport surgery)
by one that ends with a successor to move to.  A first generation starts without
either, and no generation's start waits for them.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.logger import Logger

from txflip._reactor import Reactor
from txflip.drain._served import Served
from txflip.drain._tracker import ConnectionTracker
from txflip.generation._ending import Ending
from txflip.generation._machine import Upgrader
from txflip.move._spawn import CHANNEL_NAME, inheritedChannel

if TYPE_CHECKING:
    from txflip.move._in import Receiver
    from txflip.move._out import ChannelMover


class ServiceMoves:
    """
    One generation's moving, in and out, over the service's C{streams} (the
    service's own list: listeners added later count too).
    """

    _log = Logger()

    def __init__(
        self,
        upgrader: Upgrader,
        reactor: Reactor,
        streams: Sequence[Served],
        move: bool,
    ) -> None:
        """
        @param move: whether to move at all (L{False}: everything drains).
        """
        self._upgrader = upgrader
        self._reactor = reactor
        self._streams = streams
        self._move = move
        if move:
            upgrader.openChannel(CHANNEL_NAME)
        #: The channel claimed from the previous generation, until we serve.
        self._channel: socket.socket | None = None
        self._receiver: Receiver | None = None

    def claim(self) -> None:
        """
        Claim the channel the previous generation moves its connections over (if
        it passed one), as the service starts: inherited fds nobody claims are
        closed.
        """
        fd = self._upgrader.claimInheritedFD(CHANNEL_NAME)
        sock = inheritedChannel(fd) if fd is not None else None
        if sock is None:
            return
        if not self._move:
            sock.close()  # the previous generation sees it closed, and drains
            return
        self._channel = sock

    def receive(self) -> None:
        """
        Take the connections the previous generation moves to us: called as this
        generation declares that it serves (L{Upgrader.ready}), which is what the
        previous one waits for before it moves any, so that the receiving side's
        import is no part of the start it waits for.
        """
        sock, self._channel = self._channel, None
        if sock is None:
            return
        from txflip.move._in import Receiver

        self._receiver = Receiver(self._reactor, sock, self._movableTracker)

    def prepare(self) -> None:
        """
        An upgrade starts: import the moving side now, while the next generation
        starts, and not once it serves, when its import would delay our drain
        (and the connections' move) by as long.
        """
        if self._move:
            import txflip.move._out  # noqa: F401

    def stopReceiving(self) -> None:
        if self._channel is not None:
            self._channel.close()  # never served: nothing came over it
            self._channel = None
        if self._receiver is not None:
            self._receiver.close()

    def _movableTracker(self, key: str) -> ConnectionTracker | None:
        """
        The tracker of the listener known as C{key} in both generations (its
        address), if its connections may move: not through TLS.
        """
        for each in self._streams:
            if each.movable and str(each.listener.spec) == key:
                return each.tracker
        return None

    def mover(self, ending: Ending) -> ChannelMover | None:
        """
        What moves our connections as we drain, if a newer generation takes them:
        the one that replaced us (C{ending}), through the channel opened to it.
        """
        successor = ending.successor
        sock = successor.channels.get(CHANNEL_NAME) if successor else None
        if sock is None and self._move:
            # A worker of txflip run: the supervisor pairs us with a newer
            # worker; the sockets then go from us to it directly.
            sock = self._upgrader.parent.successorChannel()
        if sock is None:
            return None
        from txflip.move._out import ChannelMover

        keys = {
            each.tracker: str(each.listener.spec)
            for each in self._streams
            if each.movable
        }
        return ChannelMover(self._reactor, sock, keys)

    def moved(self, mover: ChannelMover, ending: Ending) -> None:
        """
        The drain is over: close C{mover}'s channel and say what it moved.
        """
        mover.close()
        successor = ending.successor.pid if ending.successor else None
        self._log.info(
            "txflip: moved {moved} connections to {where} in {ms:.1f} ms"
            " ({refused} refused)",
            moved=mover.moved,
            where=f"pid {successor}" if successor else "a newer worker",
            ms=mover.took * 1000,
            refused=mover.refused,
        )
