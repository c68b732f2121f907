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


def zombieChildren(parent: int) -> list[int]:
    """
    The pids of C{parent}'s children that have exited and are not reaped yet.
    """
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) S ppid ...": comm may contain ')' and spaces.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and fields[0] == b"Z" and int(fields[1]) == parent:
            found.append(int(entry))
    return found


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
        ours = self._ours()
        for pid in zombieChildren(os.getpid()):
            if pid in ours:
                continue
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if got == pid:
                self.reaped += 1
                _log.debug(
                    "txflip run: reaped orphan pid {pid} ({status})",
                    pid=pid,
                    status=os.waitstatus_to_exitcode(status),
                )
