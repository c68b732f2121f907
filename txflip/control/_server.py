"""
The control socket: how C{txflip upgrade} and C{txflip status} talk to a running
service, and learn whether an upgrade worked.

The wire is one request line (C{upgrade} or C{status}) and one JSON reply line,
after which the service closes the connection.  The socket is a Unix stream socket,
mode 0600, handed over to each generation like any other listener; on Linux the
peer's credentials are checked too (same uid, or root).  Whatever arrives that is
not a request -- garbage, an oversized line, a client too slow to finish its line --
gets an error reply or a close, and never affects the service.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from txflip._reactor import Clock
from txflip._settings import DEFAULT_REQUEST_TIMEOUT
from txflip.drain._tracker import IDrainable

MAX_REQUEST = 1024
REQUEST_TIMEOUT = DEFAULT_REQUEST_TIMEOUT
COMMANDS = ("upgrade", "status")


class Controlled(TypingProtocol):
    """
    What the control socket needs of the service it controls.
    """

    @property
    def clock(self) -> Clock:
        """
        For the request timeouts.
        """

    def status(self) -> dict[str, object]:
        """
        What C{txflip status} shows.
        """

    def upgrade(self, join: bool = False) -> Deferred[Any]:
        """
        Upgrade (joining one in progress): fires with the new pid, or (a
        supervisor) the list of its new workers' pids.
        """


def peerUID(transport: Any) -> int | None:
    """
    The uid of the process at the other end of a Unix socket, where the platform
    tells (Linux); L{None} elsewhere.
    """
    option = getattr(socket, "SO_PEERCRED", None)
    handle = getattr(transport, "getHandle", lambda: None)()
    if option is None or handle is None:
        return None
    try:
        credentials = handle.getsockopt(
            socket.SOL_SOCKET, option, struct.calcsize("3i")
        )
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return int(uid)


@implementer(IDrainable)
class ControlProtocol(Protocol):
    def __init__(
        self, service: Controlled, requestTimeout: float = REQUEST_TIMEOUT
    ) -> None:
        self._service = service
        self._requestTimeout = requestTimeout
        self._buffer = b""
        self._busy = False
        self._timeout: IDelayedCall | None = None

    def connectionMade(self) -> None:
        uid = peerUID(self.transport)
        if uid is not None and uid not in (0, os.getuid()):
            self._reply({"ok": False, "error": "permission denied"}, unread=True)
            return
        clock = self._service.clock
        self._timeout = clock.callLater(self._requestTimeout, self._tooSlow)

    def _tooSlow(self) -> None:
        self._timeout = None
        self._reply({"ok": False, "error": "request timed out"}, unread=True)

    def dataReceived(self, data: bytes) -> None:
        if self._busy:
            return
        self._buffer += data
        line, newline, _ = self._buffer.partition(b"\n")
        if not newline:
            if len(self._buffer) > MAX_REQUEST:
                self._buffer = b""
                self._reply({"ok": False, "error": "request too long"}, unread=True)
            return
        self._busy = True
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        command = line.strip().decode("ascii", "replace")
        if command == "status":
            self._reply({"ok": True, **self._service.status()})
        elif command == "upgrade":
            self._service.upgrade(join=True).addCallbacks(
                lambda pid: self._reply(
                    {"ok": True, "pid": pid[0], "pids": pid}
                    if isinstance(pid, list)
                    else {"ok": True, "pid": pid}
                ),
                lambda reason: self._reply(
                    {"ok": False, "error": reason.getErrorMessage()}
                ),
            )
        else:
            self._reply(
                {
                    "ok": False,
                    "error": f"unknown command (expected one of: {', '.join(COMMANDS)})",
                }
            )

    def _reply(self, message: dict[str, Any], unread: bool = False) -> None:
        """
        Write C{message} and close.  With C{unread} (the client may still be
        sending), close only our sending side and discard what still arrives: closing
        a socket with unread input resets it, and the client would lose the reply.
        """
        if self.transport is None or not self.connected:
            return
        self._busy = True
        self.transport.write(json.dumps(message).encode() + b"\n")
        if unread:
            transport: Any = self.transport
            transport.loseWriteConnection()
            clock = self._service.clock
            self._timeout = clock.callLater(
                self._requestTimeout, transport.abortConnection
            )
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def startDraining(self) -> None:
        """
        We always close with the reply; nothing more to do.
        """

    def closeIfIdle(self) -> None:
        if not self._busy and self.transport is not None:
            self.transport.loseConnection()


class ControlFactory(Factory):
    """
    @param requestTimeout: how long a client may take to send its request (and
        to read an error reply) before it is cut off.
    """

    def __init__(
        self, service: Controlled, requestTimeout: float = REQUEST_TIMEOUT
    ) -> None:
        self._service = service
        self._requestTimeout = requestTimeout

    def buildProtocol(self, addr: IAddress | None) -> ControlProtocol:
        return ControlProtocol(self._service, self._requestTimeout)
