"""
How a generation ends, as one value: L{Upgrader.whenExit} fires with it.

What happens after the end (the service's drain, moving connections to the new
generation) reads this one record, instead of asking the upgrader whether it was
replaced, by whom, and through which channel, and instead of a spawner wrapped
around the upgrader's own to keep the channel's other end.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple


class Successor(NamedTuple):
    """
    The generation that replaced this one.

    @ivar pid: its process id.
    @ivar channels: our end of each channel opened to it when it was started
        (L{Upgrader.openChannel}), by name; whoever uses one closes it.
    """

    pid: int
    channels: Mapping[str, socket.socket] = MappingProxyType({})


class Ending(NamedTuple):
    """
    How this generation ended: replaced by a L{Successor}, or stopped for good
    (C{successor} is L{None}: no generation of ours serves after us).
    """

    successor: Successor | None = None

    @property
    def final(self) -> bool:
        """
        Whether this was a final stop: nothing of ours takes over.
        """
        return self.successor is None


#: The end of a generation that nobody replaced.
STOPPED = Ending()


def openChannels(
    names: list[str],
) -> tuple[dict[str, socket.socket], dict[str, socket.socket]]:
    """
    A fresh Unix stream socketpair per name: (our ends, the next generation's).
    """
    ours: dict[str, socket.socket] = {}
    theirs: dict[str, socket.socket] = {}
    try:
        for name in names:
            ours[name], theirs[name] = socket.socketpair(
                socket.AF_UNIX, socket.SOCK_STREAM
            )
    except OSError:
        closeAll(ours)
        closeAll(theirs)
        raise
    return ours, theirs


def closeAll(sockets: Mapping[str, socket.socket]) -> None:
    for sock in sockets.values():
        sock.close()
