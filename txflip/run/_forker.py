"""
The supervisor's end of a process that forks children on request
(L{txflip.run._template}'s loop): a template, whose children are its
generation's workers, or the zygote, whose children are templates.

One request is out at a time: each carries a child's environment and fds, and a
burst of them (every worker of a generation at once) would fill the socket's
buffer (C{EAGAIN}) or pass more fds than may be in flight.  The forker is the
children's parent and reports their exit statuses; if it dies first, each child
(a L{txflip.run._forked.ForkedChild}) is followed by its pidfd and reaped by us.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from txflip.generation._exits import describeExit
from txflip.run._forked import ForkedChild
from txflip.run._stderr import StderrTail, withTail
from txflip.run._template import MAX_MESSAGE


@implementer(IReadDescriptor)
class Forker:
    """
    Our socket to a forking process, and the children it forks for us.

    @ivar theirs: the process's end of the socket (its fd 3), until it has it.
    @ivar pid: the process's pid, once known.
    """

    #: What L{Forker._why} calls the process.
    role = "a preloading process"

    def __init__(self, reactor: Any, idle: Callable[[Any], None]) -> None:
        self._reactor = reactor
        self._idle = idle
        self.pid = 0
        self.ready = self.gone = False
        #: What it said as it became ready.
        self.said: dict[str, Any] = {}
        self._error: str | None = None
        self._reason: Failure | None = None
        self._queue: list[ForkedChild] = []
        self._asked: dict[int, ForkedChild] = {}
        self._children: dict[int, ForkedChild] = {}
        self._ids = 0
        self._sock, self.theirs = socket.socketpair(
            socket.AF_UNIX, socket.SOCK_SEQPACKET
        )
        self._sock.setblocking(False)
        try:
            self.stderr = StderrTail(reactor)
        except OSError:  # EMFILE: leave no fd behind
            self._sock.close()
            self.theirs.close()
            raise
        reactor.addReader(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid}>"

    def started(self) -> None:
        """
        The process has its ends (or failed to start): close ours of them.
        """
        self.theirs.close()
        self.stderr.started()

    def abandon(self) -> None:
        """
        It could not be started (C{EMFILE}): close every fd of ours.
        """
        self._reactor.removeReader(self)
        self._sock.close()
        self.started()
        self.stderr.close()

    def fork(self, child: ForkedChild) -> None:
        child.onEnd = self._checkIdle
        if self.gone:
            child.notForked(self._why())
            return
        self._queue.append(child)
        self._next()

    def _next(self) -> None:
        while self.ready and not self.gone and not self._asked and self._queue:
            child = self._queue.pop(0)
            if not child.gone:
                self._ask(child)

    def _ask(self, child: ForkedChild) -> None:
        try:
            fds = child.toSend()
            request = {"id": self._ids + 1, "env": child.environ, "fds": sorted(fds)}
            request.update(self._extra(child))
            message = json.dumps(request).encode()
            socket.send_fds(self._sock, [message], [fds[t] for t in sorted(fds)])
        except OSError as e:
            child.notForked(f"cannot ask {self.role} to fork: {e}")
            return
        self._ids += 1
        self._asked[self._ids] = child

    def _isReady(self) -> None:
        """
        It is ready, and said L{said}.
        """

    def _extra(self, child: ForkedChild) -> dict[str, Any]:
        """
        What else each request says.
        """
        return {}

    # -- the socket ---------------------------------------------------------------

    def fileno(self) -> int:
        return self._sock.fileno()

    def logPrefix(self) -> str:
        return "txflip-preload"

    def doRead(self) -> None:
        while True:
            try:
                data = self._sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._reactor.removeReader(self)
                return
            self._message(json.loads(data))

    def connectionLost(self, reason: Failure) -> None:
        self._reactor.removeReader(self)

    def _message(self, message: dict[str, Any]) -> None:
        if "ready" in message:
            self.ready = True
            self.said = message
            self._isReady()
            self._next()
        elif "forked" in message:  # first: a fork that failed says "error" too
            self._answered(self._asked.pop(int(message["forked"])), message)
            self._next()
        elif "error" in message:
            self._error = str(message["error"])
        elif "exited" in message:
            ended = self._children.pop(int(message["exited"]), None)
            if ended is not None:
                ended.exited(int(message["status"]))
        # A child cancelled while its request was out has ended already, and
        # will not say so again: look now.
        self._reactor.callLater(0, self._checkIdle)

    def _answered(self, child: ForkedChild, answer: dict[str, Any]) -> None:
        child.sent()
        if "pid" in answer:
            self._children[int(answer["pid"])] = child
            child.forked(int(answer["pid"]))
        else:
            child.notForked(f"{self.role}: {answer['error']}")

    def busy(self) -> bool:
        return bool(self._queue or self._asked or self._children)

    def _checkIdle(self) -> None:
        self._queue = [c for c in self._queue if not c.gone]
        if not (self.gone or self.busy()):
            self._idle(self)

    def retire(self) -> None:
        """
        Close our end: the process exits (its children, if any, are ours then).
        """
        if self._sock.fileno() >= 0:
            self._reactor.removeReader(self)
            self._sock.close()
        if not (self.ready or self.gone):  # stuck importing: nobody waits for it
            self.kill()

    def kill(self) -> None:
        raise NotImplementedError

    def ended(self, reason: Failure | None) -> None:
        """
        The process is gone (C{reason}: how; L{None}: it never started).
        """
        self.doRead()  # what it said before it died
        self.gone = True
        self._reason = reason
        self.retire()
        why = self._why()
        for child in [*self._queue, *self._asked.values()]:
            child.notForked(why)
        self._queue, self._asked = [], {}
        for child in self._children.values():
            child.parentGone()
        self._children = {c.pid: c for c in self._children.values() if not c.gone}
        self.stderr.close()

    def _why(self) -> str:
        message = describeExit(self.pid, self._reason).replace(
            f"pid={self.pid}", f"pid={self.pid} ({self.role})"
        )
        if self._error:
            message = f"{message}: {self._error}"
        return withTail(message, self.stderr.tail())
