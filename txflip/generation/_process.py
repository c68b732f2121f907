"""
What this process is, in txflip's terms: a first generation or a child, whether fd 3
is still the ready pipe to its parent, and the one L{txflip.Upgrader} it may have.

One explicit object (L{thisProcess}) instead of module globals scattered over the
package.  A second Upgrader in one process is refused, as tableflip does: the
handoff marker is read (and removed) by the first, so a second one would believe
it is a first generation.  Tests give each Upgrader its own L{ProcessState}.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, MutableMapping
from types import TracebackType
from typing import NoReturn

from txflip._errors import TxflipError
from txflip.generation import _handoff
from txflip.generation._signals import catchHeldSignals


class ProcessState:
    """
    This process's txflip identity.

    @ivar handoff: what the parent passed, once an Upgrader has read it.
    """

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._claimed = False
        self._child = False
        self.handoff: _handoff.Handoff | None = None

    def claim(self, environ: MutableMapping[str, str]) -> _handoff.Handoff | None:
        """
        For the one Upgrader of this process: read (and remove) the handoff marker
        from C{environ}.

        @raise TxflipError: an Upgrader exists already.
        @raise HandoffError: the inherited state is unusable.
        """
        if self._claimed:
            raise TxflipError(
                "an Upgrader exists already in this process; make one and share it"
            )
        self._claimed = True
        self._child = _handoff.MARKER in environ
        self.handoff = _handoff.fromEnvironment(environ)
        if self.handoff is not None:
            # Spawned with the signals we handle blocked: from now on a handler
            # holds them, so that the application's own children are not born
            # with them blocked.
            catchHeldSignals()
        return self.handoff

    @property
    def isChild(self) -> bool:
        """
        Whether a previous generation started this process (known before any
        Upgrader exists: the marker is still in the environment then).
        """
        return self._child or _handoff.MARKER in self._environ

    def tellParentError(self, message: str) -> None:
        """
        A child that cannot start says why on the ready pipe before exiting.  Does
        nothing in a first generation, or once fd 3 is no longer our ready pipe.
        """
        handoff = self.handoff
        if handoff is None:
            if self.isChild:  # the marker was unusable: fd 3 is still the pipe
                _handoff.tellParentError(_handoff.READY_FD, message)
        elif handoff.readyOpen:
            _handoff.tellParentError(handoff.readyFD, message)


#: The state of the running process.
thisProcess = ProcessState()

#: The longest summary of an uncaught exception told to the parent.
SUMMARY_WIDTH = 300


def tellParentError(message: str) -> None:
    """
    L{ProcessState.tellParentError} for this process.
    """
    thisProcess.tellParentError(message)


def failStartup(message: str) -> NoReturn:
    """
    Exit with C{message} on one line; a later generation also tells its parent,
    whose failed upgrade then names the reason.

    Here, beside the process state, because every entry point that can fail while
    starting (twistd's plugins, C{flip:} endpoints, flipecho) needs it, and none of
    them should import another to get it.
    """
    tellParentError(message)
    raise SystemExit(f"txflip: {message}")


def summarize(error: BaseException) -> str:
    """
    C{CannotListenError: Couldn't listen on 127.0.0.1:8080: [Errno 98] Address
    already in use}: C{error} on one bounded line, for the parent's one-line
    error (the traceback is the log's).
    """
    try:
        text = " ".join(str(error).split()).removesuffix(".")
    except Exception:  # noqa: BLE001 - a broken __str__ still has a type
        text = ""
    line = f"{type(error).__name__}: {text}" if text else type(error).__name__
    if len(line) > SUMMARY_WIDTH:
        line = line[: SUMMARY_WIDTH - 1] + "\N{HORIZONTAL ELLIPSIS}"
    return line


ExceptHook = Callable[
    [type[BaseException], BaseException, TracebackType | None], object
]


def tellingParent(hook: ExceptHook) -> ExceptHook:
    """
    C{hook} (what prints the traceback), then tell the parent, if the exception
    ends a child before it said it was ready, what it was.

    The one place every entry point's start-up exceptions pass: twistd lets an
    exception from C{makeService} or C{privilegedStartService} (a port in use)
    propagate out of C{run()}, after logging nothing of its own; so do a preloaded
    worker's template and a C{flip:} endpoint's program.  Without this the
    parent would only know the exit status, and the reason would be in a log
    it does not read (twistd's log holds C{sys.stderr}: a supervisor sees
    nothing of the traceback).
    """

    def excepthook(
        kind: type[BaseException], error: BaseException, tb: TracebackType | None
    ) -> None:
        try:
            hook(kind, error, tb)
        finally:
            thisProcess.tellParentError(summarize(error))

    return excepthook


# Installed on import, not when an Upgrader claims the handoff: a plugin's
# makeService may fail before it makes one, and a preloaded worker inherits
# whatever its template installed.  Whether there is a parent to tell is
# decided when the exception comes; a first generation only prints it.
sys.excepthook = tellingParent(sys.excepthook)
