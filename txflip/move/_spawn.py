"""
Giving each next generation its moves channel (L{txflip.move._wire}).

Directly: the old generation asks its upgrader to open a channel named
L{CHANNEL_NAME} to each next generation (L{txflip.Upgrader.openChannel}), which
inherits one end in its handoff table; ours comes with the successor when this
generation ends.  Under C{txflip run}: the supervisor makes it when it spawns a
worker, keeps the other end, and hands it to the older worker that retires in its
favour; the sockets then go from worker to worker, never through the supervisor.
"""

from __future__ import annotations

import socket

#: The channel's name in the handoff table's C{fds}.
CHANNEL_NAME = "moves"


def channelPair() -> tuple[socket.socket, socket.socket]:
    """
    A new moves channel: (the old generation's end, the new one's).
    """
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


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
