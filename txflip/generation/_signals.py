"""
The signals a new generation is born with blocked, and their release.

C{spawnProcess} resets ignored signals to their default in the child, and the
default action of SIGHUP, SIGTERM, SIGQUIT and SIGINT kills: a process-group signal
(a terminal's hangup or Ctrl-C, C{systemctl kill}, a log rotator's SIGUSR1)
reaching a child before its handler is installed would end it.  Blocked, it waits
for the handler instead.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

#: The signals txflip or twistd handle.
HELD = frozenset(
    getattr(signal, name)
    for name in ("SIGHUP", "SIGQUIT", "SIGTERM", "SIGINT", "SIGUSR1")
    if hasattr(signal, name)
)


@contextmanager
def signalsHeld() -> Iterator[None]:
    """
    Block L{HELD} while the child is started.  The child inherits the blocked mask;
    L{releaseSignals} delivers what came meanwhile once the handlers are in place.
    Here, such a signal is only delayed.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def releaseSignals(*signums: int) -> None:
    """
    Unblock C{signums} (by default all of L{HELD}), blocked since we were spawned:
    call once their handlers are installed.
    """
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(signums) or HELD)
