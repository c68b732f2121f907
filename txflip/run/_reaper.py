"""
Reaping orphans: what an init (PID 1) or a child subreaper must do.

As a container's PID 1, every orphan of the namespace becomes our child; as a
subreaper (C{prctl(PR_SET_CHILD_SUBREAPER)}, Linux), so does every orphan among our
descendants (a worker's own subprocesses, a daemonizing grandchild).  Their exit
statuses must be collected or they stay zombies.  Twisted reaps only the processes
it spawned, each with C{waitpid(pid)}; a C{waitpid(-1)} here would steal a worker's
status from it.  So we look for zombie children that are not ours to watch -- in
C{/proc}, whose C{stat} gives each process's state and parent -- and reap exactly
those, by pid.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Container
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

PR_SET_CHILD_SUBREAPER = 36
#: How often to look; a zombie costs a pid and a few hundred bytes meanwhile.
INTERVAL = 1.0
_log = Logger()


def becomeSubreaper() -> bool:
    """
    Make orphaned descendants our children (Linux); whether it worked.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def waitingChild() -> int | None:
    """
    The pid of one child of ours that has exited and is not reaped yet, left
    unreaped (C{WNOWAIT}): one system call, whatever the number of processes.
    """
    try:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    return info.si_pid if info is not None else None


class Reaper:
    """
    Reaps, every L{INTERVAL} and when asked (L{reapNow}), every zombie child whose
    pid C{ours()} does not contain.
    """

    def __init__(self, reactor: Any, ours: Callable[[], Container[int]]) -> None:
        self._ours = ours
        self._loop = LoopingCall(self.reapNow)
        self._loop.clock = reactor
        self.reaped = 0

    def start(self) -> None:
        self._loop.start(INTERVAL, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def reapNow(self) -> None:
        """
        Reap exited children that are not ours, until the one the kernel shows
        first is ours (Twisted reaps it; the next look sees past it) or none is
        left.
        """
        ours = self._ours()
        while (pid := waitingChild()) is not None and pid not in ours:
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return
            if got != pid:
                return
            self.reaped += 1
            _log.debug(
                "txflip run: reaped orphan pid {pid} ({status})",
                pid=pid,
                status=os.waitstatus_to_exitcode(status),
            )
