"""
txflip: zero-downtime, graceful process upgrades for Twisted servers.

On SIGHUP a running server starts a new copy of its own command line, hands it its
listening sockets, waits until it serves, then stops accepting, drains its
connections at a clean boundary, and exits.

The package's tree is its architecture, one subpackage per step of that life:
L{generation} (the core: one process's life, its machine, spawning, the pid file),
L{listen} (listening sockets), L{drain} (ending connections at a boundary),
L{move} (moving them to the next generation instead), L{protocols} (protocol
families that drain or move without knowing txflip), L{control} (the control
socket and what operators see), L{run} (C{txflip run}, the stable-PID supervisor)
and L{check} (C{txflip check}, the verifier).

The layering rule: the core (L{generation}, L{listen}) imports neither L{run},
L{move}, L{control} nor L{check}, even inside a function; and no two modules import
each other (C{tests/test_layers.py} and C{tests/test_imports.py} check both).  What
the core needs of the layers above, it defines as a Protocol they implement (the
parent of a generation, a drain's mover).
"""

# The IDrainable and IMovable adapters for twisted.web's channels and others are
# registered on first use, and only if the server imports them (txflip.protocols).
from txflip._draining import whenDraining
from txflip._errors import (
    ChildFailed,
    HandoffError,
    ListenError,
    NotReady,
    ParentAlive,
    PidFileError,
    Refused,
    RunningAsInit,
    SpawnFailed,
    Stopping,
    TxflipError,
    UpgradeError,
    UpgradeInProgress,
    UpgradeTimeout,
    WorkerOfSupervisor,
)
from txflip._logging import startLogging
from txflip._settings import SettingError
from txflip.drain._cork import closeWithReply
from txflip.drain._pending import replyPending
from txflip.drain._signal import isDraining
from txflip.drain._tracker import ConnectionTracker, IDrainable
from txflip.generation._ending import Ending, Successor
from txflip.generation._handoff import SUPERVISOR as _SUPERVISOR
from txflip.generation._parent import registerParent as _registerParent
from txflip.listen._fds import Listener
from txflip.move._movable import (
    ConnectionMoved,
    ConnectionState,
    IMovable,
    StateRefused,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from txflip.generation._machine import Upgrader
    from txflip.generation._parent import Parent
    from txflip.service import UpgradeService


def _supervisorLink(fd: int, supervisorPID: int | None) -> "Parent":
    """
    The parent of a worker of C{txflip run}: its link to the supervisor,
    imported only by a worker (a server in direct mode never needs it).
    """
    from txflip.run._channel import SupervisorLink

    return SupervisorLink(fd, supervisorPID)


# Registers the supervisor as a kind of parent (a worker of txflip run finds it in
# its handoff table): the core (txflip.generation) never imports txflip.run.
_registerParent(_SUPERVISOR, _supervisorLink)


def __getattr__(name: str) -> object:
    """
    L{Upgrader} and L{UpgradeService} import Twisted's TCP support, and with it
    its TLS layer (pyOpenSSL, cryptography: about 12 MiB): on first use, so that
    C{txflip run}'s supervisor, which imports this package first, can keep them
    out (L{txflip.run._cli.withoutTLS}).
    """
    if name == "Upgrader":
        from txflip.generation._machine import Upgrader

        return Upgrader
    if name == "UpgradeService":
        from txflip.service import UpgradeService

        return UpgradeService
    raise AttributeError(f"module 'txflip' has no attribute {name!r}")


__all__ = [
    "ChildFailed",
    "ConnectionMoved",
    "ConnectionState",
    "ConnectionTracker",
    "Ending",
    "HandoffError",
    "IDrainable",
    "IMovable",
    "ListenError",
    "Listener",
    "NotReady",
    "ParentAlive",
    "PidFileError",
    "Refused",
    "RunningAsInit",
    "SettingError",
    "SpawnFailed",
    "StateRefused",
    "Stopping",
    "Successor",
    "TxflipError",
    "UpgradeError",
    "UpgradeInProgress",
    "UpgradeService",
    "UpgradeTimeout",
    "Upgrader",
    "WorkerOfSupervisor",
    "closeWithReply",
    "isDraining",
    "replyPending",
    "startLogging",
    "whenDraining",
]
