"""
Starting the next generation I{detached}, and watching a process we are not the
parent of.

Under systemd (C{$NOTIFY_SOCKET} set) the child is started through a tiny
trampoline that forks it and exits at once, so that it is PID 1's child (or the
nearest subreaper's) before it starts, let alone names itself with C{MAINPID=}.
systemd then supervises it as its own child: it waits for it at C{systemctl stop}
instead of killing it together with the stop signal, as it does an "alien" main
process (one that is not its child).  The price is C{waitpid()}: we are not its
parent.  A pidfd (L{PidWatch}) gives back what matters: we learn when it exits
(not its exit status, which its reaper gets; the reason a failed child gives on
the ready pipe still reaches us), and we can signal it without racing a reused
pid.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

from twisted.python.runtime import platform

from txflip._reactor import Reactor
from txflip.generation._handoff import ParentWatcher

#: Run as C{python -I -S -c TRAMPOLINE executable argv...}: fork; the parent says
#: the child's pid on the ready pipe and exits; the child waits until it has been
#: reparented, then becomes the next generation.
TRAMPOLINE = """\
import os, sys, time
me = os.getpid()
child = os.fork()
if child:
    os.write(3, b"pid %d\\n" % child)
    os._exit(0)
while os.getppid() == me:
    time.sleep(0.001)
try:
    os.execv(sys.argv[1], sys.argv[2:])
except OSError as e:
    os.write(3, ("error cannot run %s: %s\\n" % (sys.argv[1], e.strerror)).encode())
    os._exit(127)
"""
#: What the trampoline's line on the ready pipe starts with, before the pid.
PID_PREFIX = b"pid "


def shouldDetach(environ: Mapping[str, str]) -> bool:
    """
    Whether to start the next generation as PID 1's child rather than ours: under
    systemd (which supervises the main pid it is told of), where pidfds exist.
    """
    return (
        bool(environ.get("NOTIFY_SOCKET"))
        and platform.isLinux()
        and hasattr(os, "pidfd_open")
        and hasattr(signal, "pidfd_send_signal")
    )


def throughTrampoline(executable: str, args: Sequence[str]) -> tuple[str, list[str]]:
    """
    The executable and argv that start C{executable args} through L{TRAMPOLINE}.
    """
    return sys.executable, [
        sys.executable,
        "-I",
        "-S",
        "-c",
        TRAMPOLINE,
        executable,
        *args,
    ]


class PidWatch:
    """
    A process we did not start (or are not the parent of), held by a pidfd:
    C{onExit} is called once it has exited, and L{signal} never reaches another
    process that reused its pid.
    """

    def __init__(self, reactor: Reactor, pid: int, onExit: Callable[[], None]) -> None:
        """
        @raise OSError: no such process (or no pidfds here).
        """
        self.pid = pid
        self._pidfd = os.pidfd_open(pid)
        self._onExit = onExit
        # A pidfd reads as an error once the process exits: the pipe watcher's
        # end-of-file, which closes the fd and tells us.
        ParentWatcher(reactor, self._pidfd, self._exited)

    def signal(self, signum: int) -> None:
        """
        Send C{signum}, unless the process is gone.
        """
        if self._pidfd < 0:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            pass

    def _exited(self) -> None:
        self._pidfd = -1  # the watcher closed it: never signal it again
        self._onExit()
