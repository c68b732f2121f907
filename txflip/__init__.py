"""
txflip: zero-downtime, graceful process upgrades for Twisted servers.

On SIGHUP a running server starts a new copy of its own command line, hands it its
listening sockets, waits until it serves, then stops accepting, drains its
connections at a clean boundary, and exits.
"""

# Registers the IDrainable and IMovable adapters for twisted.web's channels: every
# entry point (UpgradeService, Upgrader, flip:, flipecho) imports this package first.
from txflip._errors import (
    ChildFailed,
    HandoffError,
    ListenError,
    NotReady,
    ParentAlive,
    PidFileError,
    Refused,
    RunningAsInit,
    Stopping,
    TxflipError,
    UpgradeError,
    UpgradeInProgress,
    UpgradeTimeout,
    WorkerOfSupervisor,
)
from txflip._settings import SettingError
from txflip.drain._cork import closeWithReply
from txflip.drain._tracker import ConnectionTracker, IDrainable
from txflip.generation._ending import Ending, Successor
from txflip.listen._fds import Listener
from txflip.move._movable import (
    ConnectionMoved,
    ConnectionState,
    IMovable,
    StateRefused,
)
from txflip.protocols import (
    _h2,  # noqa: F401
    _web,  # noqa: F401
    _webmove,  # noqa: F401
    _websocket,  # noqa: F401
)

# Registers the supervisor as a kind of parent (a worker of txflip run finds it in
# its handoff table): the core (txflip.generation) never imports txflip.run.
from txflip.protocols._webdraining import whenDraining
from txflip.run import _channel  # noqa: F401

TYPE_CHECKING = False
if TYPE_CHECKING:
    from txflip.generation._machine import Upgrader
    from txflip.service import UpgradeService


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
    "whenDraining",
]
