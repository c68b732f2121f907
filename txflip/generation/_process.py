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
from collections.abc import MutableMapping
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
