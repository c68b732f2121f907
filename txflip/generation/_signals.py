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
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

#: What C{signal.signal} returns: a handler, C{SIG_DFL}/C{SIG_IGN}, or L{None}.
Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None

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


#: What L{catchHeldSignals} replaced, by signal, until L{releaseSignals}.
_replaced: dict[int, Handler] = {}
#: The held signals that came meanwhile, to deliver at their release.
_caught: set[int] = set()


def _catch(signum: int, frame: FrameType | None) -> None:
    _caught.add(signum)


def catchHeldSignals() -> None:
    """
    Hold the signals we were spawned with blocked by a handler that notes them,
    and unblock them: a blocked mask is inherited by every process the
    application starts (through fork and exec: a helper started before the reactor
    runs would ignore C{kill -TERM}), a handler is reset to the default by exec.
    L{releaseSignals} delivers what came meanwhile, as the mask did.

    Call it as early as possible in a spawned generation, from the main thread
    (where Python runs handlers); elsewhere, or when nothing is blocked (a first
    generation), it does nothing.
    """
    if (
        not hasattr(signal, "pthread_sigmask")
        or threading.current_thread() is not threading.main_thread()
    ):
        return
    held = HELD & signal.pthread_sigmask(signal.SIG_BLOCK, ())
    for signum in held:
        _replaced[signum] = signal.signal(signum, _catch)
    if _replaced.get(signal.SIGINT) is signal.default_int_handler:
        # The reactor takes SIGINT only from Python's default handler: give it
        # back just before the reactor installs its own.
        reactor = sys.modules.get("twisted.internet.reactor")
        if reactor is not None:
            reactor.addSystemEventTrigger("before", "startup", _giveBackSigInt)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def _giveBackSigInt() -> None:
    if signal.getsignal(signal.SIGINT) is _catch:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def installedHandler(signum: int) -> Handler:
    """
    C{signal.getsignal(signum)}, as if L{catchHeldSignals} had not replaced it:
    whoever asks whether a handler is installed must not count ours.
    """
    current = signal.getsignal(signum)
    return _replaced.get(signum) if current is _catch else current


def releaseSignals(*signums: int) -> None:
    """
    Unblock C{signums} (by default all of L{HELD}), held since we were spawned,
    and deliver those that came meanwhile: call once their handlers are
    installed.  A signal still held by L{catchHeldSignals} gets back the handler
    it had before (nobody installed another).
    """
    wanted = set(signums) or HELD
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, wanted)
    for signum in sorted(wanted & _replaced.keys()):
        previous = _replaced.pop(signum)
        if signal.getsignal(signum) is _catch and previous is not None:
            signal.signal(signum, previous)
        if signum in _caught:
            _caught.discard(signum)
            signal.raise_signal(signum)
