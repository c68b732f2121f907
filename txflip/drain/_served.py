"""
One served stream listener, as the service, the mover and a worker's balancer
all see it: one typed record instead of a tuple each of them unpacks.
"""

from __future__ import annotations

from typing import NamedTuple

from twisted.internet.interfaces import IProtocolFactory

from txflip.drain._tracker import ConnectionTracker
from txflip.listen._fds import Listener


class Served(NamedTuple):
    """
    A stream listener and what it serves.

    @ivar tracker: tracks (and drains) the application's connections.
    @ivar factory: what the listener serves: the tracker, or the tracker
        wrapped (in TLS, say).
    @ivar movable: whether its connections may move to the next generation:
        only when nothing wraps the tracker (a TLS session lives in this
        process).
    """

    listener: Listener
    tracker: ConnectionTracker
    factory: IProtocolFactory
    movable: bool

    @classmethod
    def serving(
        cls, listener: Listener, tracker: ConnectionTracker, factory: IProtocolFactory
    ) -> Served:
        """
        C{listener} serving C{factory} (C{tracker}, maybe wrapped): movable
        when it serves the tracker itself.
        """
        return cls(listener, tracker, factory, factory is tracker)
