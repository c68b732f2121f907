"""
Giving each next generation its moves channel (L{txflip.move._wire}).

Directly: the old generation makes a socketpair when it spawns the next one, which
inherits one end under the name L{CHANNEL_NAME} in its handoff table
(L{ChannelSpawner}).  Under C{txflip run}: the supervisor makes it when it spawns a
worker, keeps the other end, and hands it to the older worker that retires in its
favour; the sockets then go from worker to worker, never through the supervisor.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from twisted.python.failure import Failure

if TYPE_CHECKING:
    from txflip._reactor import Reactor
    from txflip.generation._machine import Upgrader
    from txflip.generation._spawn import Attempt, Spawn, Spawner

#: The channel's name in the handoff table's C{fds}.
CHANNEL_NAME = "moves"


def channelPair() -> tuple[socket.socket, socket.socket]:
    """
    A new moves channel: (the old generation's end, the new one's).
    """
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


class ChannelSpawner:
    """
    Starts each next generation (through the upgrader's own spawner) with one end
    of a fresh moves channel, named L{CHANNEL_NAME} in its handoff table; keeps
    the other end for the generation that becomes ready.
    """

    def __init__(self, inner: Spawner) -> None:
        self._inner = inner
        self._successor: socket.socket | None = None

    @classmethod
    def wrap(cls, upgrader: Upgrader) -> ChannelSpawner:
        """
        Make C{upgrader} start its next generations through a new L{ChannelSpawner}.
        """
        made: list[ChannelSpawner] = []

        def wrapping(inner: Spawner) -> Spawner:
            made.append(cls(inner))
            return made[0]

        upgrader.wrapSpawner(wrapping)
        return made[0]

    def __call__(self, reactor: Reactor, spawn: Spawn) -> Attempt:
        ours, theirs = channelPair()
        try:
            attempt = self._inner(reactor, spawn.withFD(CHANNEL_NAME, theirs.fileno()))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child has its copy

        def ready(pid: int) -> int:
            self._successor = ours
            return pid

        def failed(reason: Failure) -> Failure:
            ours.close()
            return reason

        # Before the upgrader's own callbacks: the channel is there when it
        # learns it was replaced.
        attempt.result.addCallbacks(ready, failed)
        return attempt

    def takeSuccessor(self) -> socket.socket | None:
        """
        Our end of the channel to the generation that replaced us (once).
        """
        sock, self._successor = self._successor, None
        return sock


def inheritedChannel(fd: int) -> socket.socket | None:
    """
    The channel the previous generation passed at C{fd}, or L{None} (fd closed)
    if it is not a Unix stream socket: the parent then drains instead.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.close()
        return None
    return sock
