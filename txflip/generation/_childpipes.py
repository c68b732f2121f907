"""
Our ends of a starting child's ready pipe and parent pipe.

They are ours (C{os.pipe}), not Twisted's C{"r"}/C{"w"} child fds, whose
C{processEnded} waits for every pipe to close: a grandchild holding them (a
shell's background job) would hide the child's death as long as it lives.  Once
the child is reaped, we read what it wrote before it died and close our ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from txflip._reactor import Reactor


@implementer(IReadDescriptor)
class ChildPipes:
    """
    Our ends of the child's ready pipe (read, fed to C{received}) and of its
    parent pipe (held until the child is gone).
    """

    def __init__(self, reactor: Reactor, received: Callable[[bytes], None]) -> None:
        self._reactor = reactor
        self._received = received
        self._ready, self.readyChildEnd = os.pipe()
        try:
            self.parentChildEnd, self._parent = os.pipe()
        except OSError:  # EMFILE: leave no fd behind
            os.close(self._ready)
            os.close(self.readyChildEnd)
            raise
        os.set_blocking(self._ready, False)

    def fileno(self) -> int:
        return self._ready

    def logPrefix(self) -> str:
        return "txflip-ready"

    def started(self) -> None:
        "The child has its ends: close our copies, start reading."
        self._closeChildEnds()
        self._reactor.addReader(self)

    def _closeChildEnds(self) -> None:
        for fd in (self.readyChildEnd, self.parentChildEnd):
            if fd >= 0:
                os.close(fd)
        self.readyChildEnd = self.parentChildEnd = -1

    def doRead(self) -> None:
        try:
            data = os.read(self._ready, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._received(data)
        else:  # every writer closed: nothing more will come
            self._reactor.removeReader(self)

    def connectionLost(self, reason: Failure) -> None:
        self._reactor.removeReader(self)

    def close(self) -> None:
        """
        The child is gone (or never started): read what it wrote before it died,
        close our ends (and its, if it never had them).
        """
        self._closeChildEnds()
        if self._ready == -1:
            return
        self._reactor.removeReader(self)
        while True:
            try:
                data = os.read(self._ready, 4096)
            except OSError:  # BlockingIOError: a grandchild holds the other end
                break
            if not data:
                break
            self._received(data)
        for fd in (self._ready, self._parent):
            os.close(fd)
        self._ready = self._parent = -1
