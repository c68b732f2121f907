"""
The channel between a worker and its supervisor (C{txflip run}).

A worker started by the supervisor finds, besides its ready and parent pipes, one
end of a Unix socket pair (the handoff table's C{supervisor} entry).  When its
application asks for an address it did not inherit (a first start, or a new
C{--listen}), it does not bind it: it asks the supervisor, which binds it (or finds
the socket it already has for that address), keeps it for its whole life, and sends
back a duplicate with C{SCM_RIGHTS}.  So the supervisor owns every listening socket,
whatever its workers do, and application code stays the same.

The wire: one JSON object per message, each way.  Request C{{"listen": {kind, host,
port, path, backlog, mode}}}; reply C{{"ok": true}} with one fd attached, or
C{{"ok": false, "error": "cannot listen on ...: address already in use"}}.  A worker
asks synchronously (C{listen()} binds at once, before the reactor runs); the
supervisor answers at once from its reactor.  Datagram-framed (C{SOCK_SEQPACKET})
where the platform has it, so a message is never split.
"""

from __future__ import annotations

import array
import json
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txflip._errors import ListenError, WorkerOfSupervisor
from txflip.generation._parent import Start
from txflip.listen._addresses import KINDS, ListenSpec
from txflip.listen._fds import Listener, Listeners

MAX_MESSAGE = 4096
#: How long a worker waits for the supervisor's answer.
TIMEOUT = 10.0
_TYPE = getattr(socket, "SOCK_SEQPACKET", socket.SOCK_STREAM)
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_log = Logger()


def socketPair() -> tuple[socket.socket, socket.socket]:
    """
    (supervisor's end, worker's end); neither is inheritable.
    """
    return socket.socketpair(socket.AF_UNIX, _TYPE)


def _specToWire(spec: ListenSpec) -> dict[str, Any]:
    return {
        "kind": spec.kind,
        "host": spec.host,
        "port": spec.port,
        "path": spec.path,
        "backlog": spec.backlog,
        "mode": spec.mode,
    }


def _specFromWire(value: object) -> ListenSpec:
    if not isinstance(value, dict) or value.get("kind") not in KINDS:
        raise ValueError("bad listen request")
    for name, kind in (("host", str), ("path", str)):
        if not isinstance(value.get(name), kind):
            raise ValueError(f"bad {name}")
    for name in ("port", "backlog", "mode"):
        if not isinstance(value.get(name), int) or isinstance(value.get(name), bool):
            raise ValueError(f"bad {name}")
    return ListenSpec(
        value["kind"],
        host=value["host"],
        port=value["port"],
        path=value["path"],
        backlog=value["backlog"],
        mode=value["mode"],
    )


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """
    One message and the fds that came with it (close-on-exec).  Fds beyond the
    first are closed: nobody sends more.
    """
    data, ancillary, flags, _ = sock.recvmsg(
        MAX_MESSAGE, socket.CMSG_SPACE(4 * 4), _CLOEXEC
    )
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - len(payload) % 4])
            fds.extend(received)
    if flags & getattr(socket, "MSG_CTRUNC", 0):
        for fd in fds:
            os.close(fd)
        raise OSError("file descriptors were truncated")
    return data, fds


class SupervisorLink:
    """
    A worker's end: asks the supervisor for listening sockets.  The parent of a
    worker's generation (L{Parent}, and the L{Owner} that replaces it), chosen
    by the worker's L{Upgrader} when its handoff table names
    L{txflip.generation._handoff.SUPERVISOR} (a kind of parent C{txflip/__init__}
    registers, importing this module only then).
    """

    def __init__(self, fd: int, supervisorPID: int | None = None) -> None:
        self._sock = socket.socket(fileno=fd)
        self._sock.set_inheritable(False)
        self._sock.setblocking(True)
        self.supervisorPID = supervisorPID or os.getppid()

    @property
    def pid(self) -> int:
        return self.supervisorPID

    def begin(self, start: Start) -> None:
        start.owned(self)

    def listeners(self, inherited: Sequence[Listener]) -> Listeners:
        # Addresses nobody passed us are the supervisor's to bind, and their
        # Unix paths its to remove.
        return Listeners(inherited, bind=self.listen, unlinks=False)

    def pidFile(self, path: str | None) -> None:
        return None  # the supervisor's own pid is the service's

    def checkControl(self, path: str) -> None:
        raise self.ownControl(path)

    def checkAdmin(self, description: str) -> None:
        # Every worker would answer for one shared socket: the supervisor's
        # admin endpoint counts for them all.
        raise ListenError(
            f"--admin {description}: under txflip run the admin endpoint is txflip"
            " run's own (txflip run --admin DESCRIPTION)"
        )

    def listenedFrom(self, listener: Listener) -> str:
        return f"from the supervisor pid {self.supervisorPID}"  # binds them all

    def upgradeRefused(self) -> WorkerOfSupervisor:
        return WorkerOfSupervisor(self.supervisorPID)

    def lost(self, log: Logger) -> None:
        log.warn(
            "txflip: the supervisor (pid {pid}) is gone: stopping",
            pid=self.supervisorPID,
        )

    def listen(self, spec: ListenSpec) -> socket.socket:
        """
        The supervisor's socket for C{spec}, bound by it now if it had none.

        @raise ListenError: the supervisor could not bind it, or is gone.
        """
        try:
            error, sock = self._ask({"listen": _specToWire(spec)})
        except OSError as e:
            raise ListenError(
                f"cannot listen on {spec}: the supervisor did not answer ({e})"
            ) from None
        if sock is None:
            raise ListenError(str(error or f"cannot listen on {spec}: bad answer"))
        if sock.family != spec.family or sock.type != spec.socktype:
            sock.close()
            raise ListenError(f"cannot listen on {spec}: the supervisor sent another")
        sock.setblocking(False)
        return sock

    def ownControl(self, path: str) -> ListenError:
        """
        Why a worker may not open a control socket of its own: every worker would
        serve (and answer for) one shared socket.
        """
        return ListenError(
            f"--control {path}: under txflip run the control socket is txflip run's"
            f" own (txflip run --control PATH); supervisor pid {self.supervisorPID}"
        )

    def successorChannel(self) -> socket.socket | None:
        """
        A moves channel to a newer worker (L{txflip.move._wire}), to move our
        connections to it as we stop; L{None} if the supervisor has none for us
        (a final stop, a rollback): then we drain.
        """
        try:
            return self._ask({"moves": {}})[1]
        except OSError:
            return None

    def report(self, counts: dict[str, Any]) -> None:
        """
        Tell the supervisor what became of our connections (its metrics count
        them); no answer is awaited.
        """
        try:
            self._sock.sendall(json.dumps({"counts": counts}).encode())
        except OSError:
            pass  # the supervisor is gone: no one counts any more

    def _ask(self, request: dict[str, Any]) -> tuple[str | None, socket.socket | None]:
        """
        Send C{request}; (the supervisor's error, L{None}) or (L{None}, the one
        socket its answer carried).

        @raise OSError: the supervisor did not answer.
        """
        self._sock.settimeout(TIMEOUT)
        self._sock.sendall(json.dumps(request).encode())
        data, fds = _receive(self._sock)
        try:
            reply = json.loads(data)
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or not reply.get("ok") or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            error = reply.get("error") if isinstance(reply, dict) else None
            return (str(error) if error else None), None
        return None, socket.socket(fileno=fds[0])


@implementer(IReadDescriptor)
class ChannelServer:
    """
    The supervisor's end for one worker: answers its requests with C{bind}, which
    returns the (supervisor-owned) socket for a spec or raises L{ListenError}, and
    with C{successor}, which hands over a moves channel to a newer worker (or
    L{None}).
    """

    def __init__(
        self,
        reactor: IReactorFDSet,
        sock: socket.socket,
        bind: Callable[[ListenSpec], socket.socket],
        successor: Callable[[], socket.socket | None] = lambda: None,
        counted: Callable[[object], None] = lambda counts: None,
    ) -> None:
        """
        @param counted: given what a worker C{report}s.
        """
        self._reactor = reactor
        self._sock = sock
        self._bind = bind
        self._successor = successor
        self._counted = counted
        sock.setblocking(False)
        reactor.addReader(self)

    def fileno(self) -> int:
        return self._sock.fileno()

    def logPrefix(self) -> str:
        return "txflip-channel"

    def doRead(self) -> None:
        try:
            data, fds = _receive(self._sock)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        for fd in fds:
            os.close(fd)
        if not data:
            self.close()
            return
        try:
            request = json.loads(data)
            if isinstance(request, dict) and "moves" in request:
                self._handOver()
                return
            if isinstance(request, dict) and "counts" in request:
                self._counted(request["counts"])  # no answer
                return
            spec = _specFromWire(request["listen"])
        except (ValueError, KeyError, TypeError) as e:
            self._send({"ok": False, "error": f"bad request: {e}"})
            return
        try:
            sock = self._bind(spec)
        except ListenError as e:
            self._send({"ok": False, "error": str(e)})
            return
        _log.info(
            "txflip run: listening on {spec} for a worker",
            spec=spec.bound(sock.getsockname()),
        )
        self._send({"ok": True}, sock.fileno())

    def _handOver(self) -> None:
        channel = self._successor()
        if channel is None:
            self._send({"ok": False, "error": "no newer worker to move to"})
            return
        try:
            self._send({"ok": True}, channel.fileno())
        finally:
            channel.close()  # the workers hold both ends now: we relay nothing

    def _send(self, message: dict[str, Any], fd: int | None = None) -> None:
        ancillary = []
        if fd is not None:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        try:
            self._sock.sendmsg([json.dumps(message).encode()], ancillary)
        except OSError:
            self.close()  # the worker is gone; its end of the story is its exit

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def close(self) -> None:
        if self._sock.fileno() != -1:
            self._reactor.removeReader(self)
            self._sock.close()
