"""
A worker's stderr, passed through the supervisor: every byte goes on to the
supervisor's own stderr (the service's log loses nothing), and the last few lines
are kept, so that a worker that fails to start is reported with what it said (a
syntax error, a missing setting) and not only with its exit status.

The pipe is ours, not Twisted's C{"r"} child fd, for the reason
L{txflip.generation._childpipes} gives: a grandchild holding it must not hide the
worker's death.  We read until the last writer is gone.
"""

from __future__ import annotations

import errno
import os
from collections import deque

from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

#: Lines kept, and characters kept of each.
TAIL_LINES = 5
LINE_WIDTH = 200
_READ_SIZE = 65536


def _printable(line: bytes) -> str:
    text = line.decode("utf-8", "replace").strip()
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= LINE_WIDTH else text[: LINE_WIDTH - 1] + "…"


@implementer(IReadDescriptor)
class StderrTail:
    """
    Reads a worker's stderr pipe: passes it on to C{out} (our stderr) and keeps its
    last L{TAIL_LINES} non-empty lines.

    @ivar childEnd: the write end, for the worker's fd 2; close it with
        L{started} once the worker has it.
    """

    def __init__(self, reactor: IReactorFDSet, out: int = 2) -> None:
        self._reactor = reactor
        self._out = out
        self._fd, self.childEnd = os.pipe()
        os.set_blocking(self._fd, False)
        self._lines: deque[str] = deque(maxlen=TAIL_LINES)
        self._partial = b""
        reactor.addReader(self)

    def started(self) -> None:
        """
        The worker has its copy of the write end (or failed to start): close ours,
        so that we see the end of the file once the worker (and whatever it left
        holding its stderr) is gone.
        """
        if self.childEnd >= 0:
            os.close(self.childEnd)
            self.childEnd = -1

    def tail(self) -> list[str]:
        """
        The last lines written so far (what is in the pipe now included).
        """
        self.doRead()
        lines = list(self._lines)
        if self._partial.strip():
            lines.append(_printable(self._partial[-4 * LINE_WIDTH :]))
        return lines[-TAIL_LINES:]

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "txflip-worker-stderr"

    def doRead(self) -> None:
        while self._fd >= 0:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                self._close()
                return
            if not data:
                self._close()
                return
            self._passOn(data)
            self._keep(data)

    def _passOn(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._out, view) :]
            except InterruptedError:
                continue
            except OSError:
                return  # our own stderr is gone: nothing to pass on to

    def _keep(self, data: bytes) -> None:
        *complete, self._partial = (self._partial + data).split(b"\n")
        for line in complete:
            if line.strip():
                self._lines.append(_printable(line))
        # A line without an end is kept bounded.
        self._partial = self._partial[-4 * LINE_WIDTH :]

    def connectionLost(self, reason: Failure) -> None:
        self._close()

    def _close(self) -> None:
        if self._fd >= 0:
            self._reactor.removeReader(self)
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        """
        Stop reading (what is still in the pipe is lost); close both ends.
        """
        self.started()
        self._close()


def withTail(message: str, lines: list[str]) -> str:
    """
    C{message}, then what the worker last wrote on stderr, on one line.
    """
    if not lines:
        return message
    return f"{message}; its stderr ended: {' | '.join(lines)}"
