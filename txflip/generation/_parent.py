"""
The parent of a generation, chosen once at start: a parent generation (or none,
for a first generation), or something that started us to replace us itself (a
supervisor: L{txflip.run._channel.SupervisorLink} registers itself here with
L{registerParent}).

The machine and the service ask the L{Parent} what differs, instead of asking
which kind it is: so the core never names C{txflip run}, and the layering rule
holds (the core imports neither L{txflip.run}, L{txflip.move}, L{txflip.control}
nor L{txflip.check}).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from twisted.logger import Logger

from txflip._errors import Refused
from txflip._reactor import Clock
from txflip.generation._handoff import Handoff
from txflip.generation._pidfile import pidAlive
from txflip.listen._fds import Listener, Listeners

#: How long a child waits, once its parent's pipe is closed, for the parent to
#: have exited (a zombie, or gone) before it counts it as exited anyway.
PARENT_EXIT_WAIT = 5.0


@runtime_checkable
class Owner(Protocol):
    """
    A parent that replaces this generation itself (a supervisor): upgrades are
    its, and the end of its pipe is its death, not a previous generation's exit.
    (Runtime-checkable: automat checks each state's data against its type.)
    """

    def upgradeRefused(self) -> Refused:
        "Why this generation may not upgrade itself (names whom to upgrade)."

    def lost(self, log: Logger) -> None:
        "Say, on C{log}, that the owner is gone (this generation then stops)."


class Start(Protocol):
    """
    The inputs a L{Parent} gives a new generation's machine, once, at start.
    """

    def parentExited(self) -> None:
        "There is no previous generation to wait for."

    def owned(self, owner: Owner) -> None:
        "This generation is replaced by C{owner}, never by its own successor."


class Parent(Protocol):
    """
    Who started this generation: what the core and the service need to know of
    it, each a question the kinds of parent answer differently.
    """

    @property
    def pid(self) -> int | None:
        "The parent's pid; L{None} for a first generation."

    def begin(self, start: Start) -> None:
        "Give the new generation's machine its first input."

    def listeners(self, inherited: Sequence[Listener]) -> Listeners:
        "This generation's listeners, from those it inherited."

    def pidFile(self, path: str | None) -> str | None:
        "The pid file this generation keeps (L{None}: none, or its parent's)."

    def checkControl(self, path: str) -> None:
        """
        @raise ListenError: this generation may not open a control socket at
            C{path} of its own.
        """

    def checkAdmin(self, description: str) -> None:
        """
        @raise ListenError: this generation may not serve an admin endpoint of
            its own (C{--admin DESCRIPTION}).
        """

    def report(self, counts: dict[str, Any]) -> None:
        "What became of our connections, for a parent that keeps the metrics."

    def listenedFrom(self, listener: Listener) -> str:
        "Where C{listener}'s socket came from, for the log."

    def successorChannel(self) -> socket.socket | None:
        "A moves channel to a generation that replaces us, if the parent has one."


class ParentGeneration:
    """
    A previous generation of the same command (L{pid}), or none.
    """

    def __init__(self, pid: int | None) -> None:
        self._pid = pid

    @property
    def pid(self) -> int | None:
        return self._pid

    def begin(self, start: Start) -> None:
        if self._pid is None:
            start.parentExited()

    def listeners(self, inherited: Sequence[Listener]) -> Listeners:
        return Listeners(inherited)

    def pidFile(self, path: str | None) -> str | None:
        return path

    def checkControl(self, path: str) -> None:
        pass

    def checkAdmin(self, description: str) -> None:
        pass

    def report(self, counts: dict[str, Any]) -> None:
        pass  # a generation's metrics travel to its successor (the admin's carry)

    def listenedFrom(self, listener: Listener) -> str:
        return "inherited" if listener.inherited else "new"

    def successorChannel(self) -> socket.socket | None:
        # Our successor is our own child: its channel comes with its spawn.
        return None


#: A kind of parent that is not a generation: made from the fd it passed
#: under its name in the handoff table, and its pid from the table.
ParentKind = Callable[[int, "int | None"], Parent]
_kinds: dict[str, ParentKind] = {}


def registerParent(name: str, kind: ParentKind) -> None:
    """
    A child whose handoff table names an fd C{name} has a parent of C{kind}.
    """
    _kinds[name] = kind


def parentOf(handoff: Handoff | None) -> Parent:
    """
    The parent of the generation started with C{handoff} (L{None}: a first one).
    """
    if handoff is None:
        return ParentGeneration(None)
    for name, kind in _kinds.items():
        if name in handoff.extraFDs:
            return kind(handoff.extraFDs[name], handoff.parentPID)
    # The parent may be gone already (killed while we started), or never was
    # our parent process (started detached): the table says who it is.
    return ParentGeneration(handoff.parentPID or os.getppid())


def parentGone(pid: int | None) -> bool:
    """
    Whether the parent generation C{pid} has exited (gone, or a zombie), though
    its pipe's end is still to be seen by the reactor.  Not "we were
    reparented": a child started detached (under systemd) never was the
    parent's child.
    """
    return pid is not None and not pidAlive(pid)


def awaitParentExit(clock: Clock, pid: int | None, then: Callable[[], object]) -> None:
    """
    The parent's pipe is closed: it is exiting.  Call C{then} once it has exited
    (a zombie, or gone), or after L{PARENT_EXIT_WAIT} seconds, so that "the
    previous generation exited" is exactly true when the next upgrade is allowed.
    """
    deadline = clock.seconds() + PARENT_EXIT_WAIT

    def check() -> None:
        if parentGone(pid) or clock.seconds() > deadline:
            then()
        else:
            clock.callLater(0.005, check)

    check()
