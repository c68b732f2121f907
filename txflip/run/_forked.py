"""
A worker forked by a preloading template (L{txflip.run._preload}), as the
supervisor follows it: its ready pipe, its pid once forked, its end.

We are not its parent: its template is, and reports its exit status.  It is also
held by a pidfd (L{PidWatch}), so that a template that dies never leaves it
unwatched: orphaned, it becomes ours (the supervisor is a subreaper,
L{txflip.run._reaper}) and we reap it ourselves.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from txflip._errors import ChildFailed, Stopping
from txflip.generation import _handoff
from txflip.generation._childpipes import ChildPipes
from txflip.generation._detach import PidWatch
from txflip.generation._spawn import ChildOutcome, Spawn


def exitReason(status: int | None) -> Failure:
    """
    A wait status as the reason Twisted gives for a process's end; L{None} (not
    ours to know) as a plain exit.
    """
    if status is None:
        return Failure(ProcessDone(0))
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return Failure(ProcessDone(status))
    if code < 0:
        return Failure(ProcessTerminated(None, -code, status))
    return Failure(ProcessTerminated(code, None, status))


def duplicates(fds: dict[int, int]) -> dict[int, int]:
    """
    A copy of each of C{fds} (target: ours), or, if one cannot be made
    (C{EMFILE}), the error and none left open.
    """
    copies: dict[int, int] = {}
    try:
        for target, fd in fds.items():
            copies[target] = os.dup(fd)
    except OSError:
        for fd in copies.values():
            os.close(fd)
        raise
    return copies


class ForkedChild:
    """
    A process one of ours forks on request (a template's worker, a zygote's
    template), as the supervisor follows it: the fds it is to have, its pid once
    forked, its end, which its parent reports (L{exited}) or, if its parent dies
    first, we see by its pidfd and reap ourselves (L{parentGone}).

    @ivar environ: its environment.
    """

    def __init__(self, reactor: Any, environ: dict[str, str]) -> None:
        self.pid = 0
        self.environ = environ
        self._held: dict[int, int] = {}
        #: Called once it is gone (its parent may be idle then).
        self.onEnd: Callable[[], None] = lambda: None
        self._reactor = reactor
        self._ended = False
        self._watch: PidWatch | None = None
        self._exited = False  # the pidfd says it exited; the status may follow
        self._orphan = False  # its parent is gone: we reap it

    def give(self, fds: dict[int, int]) -> None:
        """
        Copy C{fds} (target: ours) to send; the caller keeps and closes its own.
        If a copy fails (C{EMFILE}), none is kept.
        """
        self._held.update(duplicates(fds))

    @property
    def fds(self) -> list[int]:
        "Our copies of the fds it is to have, held until its request is sent."
        return list(self._held.values())

    def toSend(self) -> dict[int, int]:
        """
        The fds it is to have (target: ours), made now that its request is to
        be sent; they are closed with L{closeFDs} once it is.

        @raise OSError: one could not be made (none is left behind).
        """
        return dict(self._held)

    def sent(self) -> None:
        """
        Its request is answered (a zygote found stale sends it again to the
        next): close ours.
        """
        self.closeFDs()

    def closeFDs(self) -> None:
        held, self._held = self._held, {}
        for fd in held.values():
            os.close(fd)

    def forked(self, pid: int) -> None:
        self.pid = pid
        try:
            self._watch = PidWatch(self._reactor, pid, self._pidExited)
        except OSError:
            pass  # gone already: its parent's report of its end follows

    def exited(self, status: int | None) -> None:
        """
        It is gone, with C{status} (L{None}: unknown).
        """
        self._end(exitReason(status))

    def notForked(self, message: str) -> None:
        raise NotImplementedError

    def parentGone(self) -> None:
        """
        Its parent is gone: it is our child now (or soon, once reparented).
        """
        self._orphan = True
        if self._exited:
            self._reapOrphan()

    def _pidExited(self) -> None:
        self._watch = None
        self._exited = True
        if self._orphan:
            self._reapOrphan()

    def _reapOrphan(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, -1
        if pid:
            self.exited(None if status < 0 else status)

    def signal(self, name: str | int) -> None:
        signum = name if isinstance(name, int) else getattr(signal, f"SIG{name}")
        if self._watch is not None:
            self._watch.signal(signum)

    def _end(self, reason: Failure | None) -> None:
        if self._ended:
            return
        self._ended = True
        self.closeFDs()
        self._reactor.callLater(0, self.onEnd)
        self._ending(reason)

    def _ending(self, reason: Failure | None) -> None:
        """
        It is gone (C{reason}: its exit), or was never forked (L{None}).
        """

    @property
    def gone(self) -> bool:
        return self._ended


class PreloadedWorker(ForkedChild, ChildOutcome):
    """
    A worker forked by a template: a L{txflip.run._workers.WorkerProcess}.

    L{started} fires with its pid once the template forked it; L{result} as
    L{txflip.generation._spawn.SpawnAttempt}'s does, once it is gone.
    """

    def __init__(
        self,
        reactor: Any,
        spawn: Spawn,
        afterReady: Callable[[Failure], None],
    ) -> None:
        super().__init__(reactor, {**spawn.environ, **dict(spawn.command.extraEnv)})
        #: Its pid once forked; fails if it never is (its consumer, the
        #: L{txflip.run._workers.Worker}, handles that: swallowing it here would
        #: hand that consumer's callback a L{None} instead of a pid).
        self.started: Deferred[int] = Deferred()
        self.result: Deferred[int] = Deferred()
        self._afterReady = afterReady
        self._ready = False
        self._failure: Exception | None = None
        self.childError: str | None = None
        self._buffer = b""
        self._generation = spawn.generation
        self._listeners = list(spawn.listeners)
        self._pipes: ChildPipes | None = None
        marker, childFDs = _handoff.plan(
            spawn.generation, spawn.listeners, spawn.extraFDs
        )
        self.environ[_handoff.MARKER] = marker
        if spawn.stderr is not None:
            childFDs[2] = spawn.stderr
        # Its caller closes its extra fds and its stderr once we return: we hold
        # copies.  The rest (0, 1, the listeners, the pipes) are made only as its
        # request is sent (L{toSend}): a generation's workers queued while their
        # template imports would each hold a dozen fds, and hit EMFILE.
        lasting = self._lasting()
        self.give({t: int(fd) for t, fd in childFDs.items() if lasting.get(t) != fd})
        self._timeout: IDelayedCall | None = reactor.callLater(
            spawn.timeout, self._timedOut, spawn.timeout
        )

    def _lasting(self) -> dict[int, int | str]:
        """
        The fds it is to have that stay ours (0, 1, 2, the listeners), and its
        pipes (C{"r"}, C{"w"}), as they are now.
        """
        return _handoff.plan(self._generation, self._listeners)[1]

    def toSend(self) -> dict[int, int]:
        fds = {
            target: fd
            for target, fd in self._lasting().items()
            if isinstance(fd, int) and target not in self._held
        }
        self._pipes = ChildPipes(self._reactor, self._received)
        fds[_handoff.READY_FD] = self._pipes.readyChildEnd
        fds[_handoff.PARENT_FD] = self._pipes.parentChildEnd
        self.give(fds)
        return super().toSend()

    def sent(self) -> None:
        super().sent()
        if self._pipes is not None:
            self._pipes.started()

    def _lateMessage(self, timeout: float) -> str:
        if not self.pid:  # no child yet: its template is still importing
            return f"the preloading template did not fork a worker within {timeout:g} s"
        return super()._lateMessage(timeout)

    # -- what the template says ---------------------------------------------------

    def forked(self, pid: int) -> None:
        super().forked(pid)
        self.started.callback(pid)
        if self._failure is not None:
            self.signal("KILL")

    def notForked(self, message: str) -> None:
        self.started.errback(Failure(ChildFailed(message)))
        self._failure = self._failure or ChildFailed(message)
        self._end(None)

    def _received(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._readyLine(line)
        if len(self._buffer) > _handoff.MAX_ERROR + 64:
            self._fail(ChildFailed(f"child pid={self.pid} sent garbage"))

    # -- WorkerProcess ------------------------------------------------------------

    def cancel(self) -> Deferred[int]:
        self._fail(Stopping())
        return self.result

    def _kill(self) -> None:
        if self.pid:
            self.signal("KILL")
        elif not self._ended:  # not forked yet: forked() kills it if it ever is
            self._end(None)

    def _ending(self, reason: Failure | None) -> None:
        if self._pipes is not None:  # first: what it wrote before it died decides
            self._pipes.close()
        self._cancelTimeout()
        if self._ready:
            self._afterReady(reason or exitReason(None))
            return
        self._failedBeforeReady(reason)
