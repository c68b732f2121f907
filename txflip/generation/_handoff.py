"""
The wire between two generations.

The parent starts the child with three kinds of inherited file descriptors, and one
environment variable (L{MARKER}) that says which is which:

  - C{ready}: the write end of a pipe; the child writes C{ready\\n} to it once it
    serves, which is the parent's cue to stop accepting and drain;
  - C{parent}: the read end of a pipe whose write end only the parent holds; it
    reads end-of-file when the parent has exited, which is the child's cue that it
    may now upgrade in turn;
  - one per listening socket, described by kind and address so that the child can
    match them against its own configuration;
  - optional extra fds, each under a name in the table's C{fds} object (what a
    supervisor or a connection mover passes along); the module that asked for a
    name owns its fd.

The table is JSON: small, readable in C{/proc/PID/environ} when debugging, and easy to
validate field by field.  Every fd it names is checked before use (open, a socket, of
the declared family and type, bound to the declared address): a child that cannot
trust its table refuses to start, and its parent keeps serving.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import stat
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from txflip._errors import HandoffError
from txflip._reactor import Reactor
from txflip.listen._addresses import KINDS, ListenSpec
from txflip.listen._fds import Listener

#: The environment variable that marks a process as a txflip child.
MARKER = "TXFLIP_HANDOFF"
VERSION = 1
READY_FD = 3
PARENT_FD = 4
FIRST_LISTENER_FD = 5
READY_MESSAGE = b"ready\n"
ERROR_PREFIX = b"error "
MAX_FD = 2**31 - 1
MAX_ERROR = 1024
#: The extra fd a supervisor's worker gets: its end of L{txflip.run._channel}.
SUPERVISOR = "supervisor"
#: The extra fd a supervisor's balanced worker gets: L{txflip.run._balance}'s table.
BALANCE = "balance"


@dataclass
class Handoff:
    """
    What a child learns from its parent.
    """

    generation: int
    readyFD: int
    parentFD: int
    listeners: list[Listener] = field(default_factory=list)
    #: The parent's pid, when its table says (it may have exited before we could
    #: ask C{getppid()}).
    parentPID: int | None = None
    #: Extra fds by name (C{fds} in the table).
    extraFDs: dict[str, int] = field(default_factory=dict)
    #: Whether C{readyFD} is still our pipe (it is closed once we said ready).
    readyOpen: bool = True


def plan(
    generation: int,
    listeners: Sequence[Listener],
    extraFDs: Mapping[str, int] | None = None,
) -> tuple[str, dict[int, int | str]]:
    """
    How to start a child of generation C{generation} that inherits C{listeners}
    (and C{extraFDs}, our fds by name): the marker's value, and the
    C{spawnProcess} C{childFDs} that places every fd where the table says.
    """
    childFDs: dict[int, int | str] = {0: 0, 1: 1, 2: 2, READY_FD: "r", PARENT_FD: "w"}
    entries = []
    for index, listener in enumerate(listeners):
        fd = FIRST_LISTENER_FD + index
        childFDs[fd] = listener.sock.fileno()
        bound = listener.spec
        entries.append(
            {
                "fd": fd,
                "kind": bound.kind,
                "host": bound.host,
                "port": bound.port,
                "path": bound.path,
                "requestedPort": listener.requested.port,
                "aliases": list(listener.aliases),
            }
        )
    named = {}
    for offset, (name, ours) in enumerate(sorted((extraFDs or {}).items())):
        fd = FIRST_LISTENER_FD + len(entries) + offset
        childFDs[fd] = ours
        named[name] = fd
    table = {
        "version": VERSION,
        "generation": generation,
        "ready": READY_FD,
        "parent": PARENT_FD,
        "parentPid": os.getpid(),
        "listeners": entries,
    }
    if named:
        table["fds"] = named
    return json.dumps(table, separators=(",", ":")), childFDs


def encode(generation: int, listeners: Sequence[Listener]) -> str:
    """
    The marker's value for a child of generation C{generation} inheriting
    C{listeners} at fds 5, 6, ... in order.
    """
    return plan(generation, listeners)[0]


def _field(table: dict[str, Any], name: str, kind: type, where: str) -> Any:
    if name not in table:
        raise HandoffError(f"malformed handoff table: {where} has no {name!r}")
    value = table[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise HandoffError(
            f"malformed handoff table: {where} {name!r} is not a {kind.__name__}"
        )
    return value


def _checkKind(fd: int, isKind: Callable[[int], bool], what: str, kind: str) -> None:
    """
    Check that inherited fd C{fd} (C{what}, as the error names it) is open and
    of C{kind} (C{isKind} of its mode: C{stat.S_ISFIFO}, C{stat.S_ISSOCK}).
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise HandoffError(f"{what} is closed") from None
    if not isKind(mode):
        raise HandoffError(f"{what} is not a {kind}")


def _checkPipe(fd: int, name: str) -> None:
    _checkKind(fd, stat.S_ISFIFO, f"handoff {name} fd {fd}", "pipe")


def _adoptSocket(fd: int, spec: ListenSpec) -> socket.socket:
    """
    Take ownership of inherited fd C{fd} after checking it is what C{spec} says.
    """
    _checkKind(fd, stat.S_ISSOCK, f"inherited fd {fd} ({spec})", "socket")
    sock = socket.socket(fileno=fd)
    try:
        if sock.family != spec.family or sock.type != spec.socktype:
            raise HandoffError(
                f"inherited fd {fd} is a {sock.family.name}/{sock.type.name} socket,"
                f" not {spec.family.name}/{spec.socktype.name} as declared ({spec})"
            )
        if spec.stream and hasattr(socket, "SO_ACCEPTCONN"):
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                raise HandoffError(f"inherited fd {fd} ({spec}) is not listening")
        actual = spec.bound(sock.getsockname())
        if spec.kind == "unix":
            name = sock.getsockname()
            if isinstance(name, bytes):
                name = os.fsdecode(name)
            if name != spec.path:
                raise HandoffError(
                    f"inherited fd {fd} is bound to {name!r}, not {spec.path!r}"
                )
        elif actual.port != spec.port or ipaddress.ip_address(
            sock.getsockname()[0]
        ) != ipaddress.ip_address(spec.host):
            raise HandoffError(
                f"inherited fd {fd} is bound to {actual}, not {spec} as declared"
            )
    except BaseException:
        sock.detach()
        raise
    sock.setblocking(False)
    sock.set_inheritable(False)
    return sock


def decode(value: str) -> Handoff:
    """
    Parse and validate the marker's value, taking ownership of the fds it names.

    @raise HandoffError: with a one-line reason; no fd has been taken then.
    """
    try:
        table = json.loads(value)
    except (ValueError, RecursionError) as e:
        raise HandoffError(f"malformed handoff table: not JSON ({e})") from None
    if not isinstance(table, dict):
        raise HandoffError("malformed handoff table: not a JSON object")
    version = _field(table, "version", int, "table")
    if version != VERSION:
        raise HandoffError(
            f"handoff table version {version} is not supported (expected {VERSION});"
            " upgrade between incompatible txflip versions with a full restart"
        )
    generation = _field(table, "generation", int, "table")
    readyFD = _field(table, "ready", int, "table")
    parentFD = _field(table, "parent", int, "table")
    entries = _field(table, "listeners", list, "table")
    parentPID = (
        _field(table, "parentPid", int, "table") if "parentPid" in table else None
    )
    if parentPID is not None and parentPID <= 0:
        raise HandoffError("malformed handoff table: bad parentPid")
    seen = {readyFD, parentFD}
    # A child of a generation is generation 2 or later; the first workers of a
    # supervisor (C{txflip run}, which passes the fd named C{supervisor}) are 1.
    fds = table.get("fds")
    first = 1 if isinstance(fds, dict) and SUPERVISOR in fds else 2
    if (
        len(seen) != 2
        or not all(3 <= fd <= MAX_FD for fd in seen)
        or generation < first
    ):
        raise HandoffError("malformed handoff table: bad generation or pipe fds")
    parsed: list[tuple[int, ListenSpec, ListenSpec, tuple[str, ...]]] = []
    for index, entry in enumerate(entries):
        where = f"listener #{index}"
        if not isinstance(entry, dict):
            raise HandoffError(f"malformed handoff table: {where} is not an object")
        fd = _field(entry, "fd", int, where)
        if not 3 <= fd <= MAX_FD or fd in seen:
            raise HandoffError(f"malformed handoff table: {where} has bad fd {fd}")
        seen.add(fd)
        kind = _field(entry, "kind", str, where)
        if kind not in KINDS:
            raise HandoffError(f"malformed handoff table: {where} kind {kind!r}")
        port = _field(entry, "port", int, where)
        requestedPort = _field(entry, "requestedPort", int, where)
        if not (0 < port < 65536 or kind == "unix") or requestedPort not in (0, port):
            raise HandoffError(f"malformed handoff table: {where} has bad port")
        host = _field(entry, "host", str, where)
        path = _field(entry, "path", str, where)
        if kind == "unix":
            if not path.startswith("/") or not path.isprintable():
                raise HandoffError(f"malformed handoff table: {where} has bad path")
        else:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                address = None
            if address is None or address.version != (6 if "6" in kind else 4):
                raise HandoffError(f"malformed handoff table: {where} has bad host")
            host = address.compressed
        spec = ListenSpec(kind, host=host, port=port, path=path)
        requested = spec._replace(port=requestedPort)
        names = entry.get("aliases", [])
        if not isinstance(names, list) or not all(
            isinstance(n, str) and n.isprintable() for n in names
        ):
            raise HandoffError(f"malformed handoff table: {where} has bad aliases")
        parsed.append((fd, spec, requested, tuple(names)))
    extraFDs = _extraFDs(table.get("fds", {}), seen)
    _checkPipe(readyFD, "ready")
    _checkPipe(parentFD, "parent")
    # spawnProcess placed our fds without close-on-exec; nothing we start later
    # (the application's own subprocesses) may inherit them.
    for fd in (readyFD, parentFD, *extraFDs.values()):
        os.set_inheritable(fd, False)
    listeners: list[Listener] = []
    try:
        for fd, spec, requested, names in parsed:
            sock = _adoptSocket(fd, spec)
            listeners.append(Listener(spec, requested, sock, True, names))
    except BaseException:
        for listener in listeners:
            listener.sock.detach()
        raise
    return Handoff(generation, readyFD, parentFD, listeners, parentPID, extraFDs)


def _extraFDs(named: object, seen: set[int]) -> dict[str, int]:
    """
    The table's C{fds} object: names to fds, each open and not named twice.
    """
    if not isinstance(named, dict):
        raise HandoffError("malformed handoff table: 'fds' is not an object")
    result = {}
    for name, fd in named.items():
        if not (isinstance(name, str) and name.isprintable()):
            raise HandoffError("malformed handoff table: bad name in 'fds'")
        fd = _field(named, name, int, "'fds'")
        if not 3 <= fd <= MAX_FD or fd in seen:
            raise HandoffError(f"malformed handoff table: fd {name!r} is bad: {fd}")
        try:
            os.fstat(fd)
        except OSError:
            raise HandoffError(f"handoff fd {name!r} ({fd}) is closed") from None
        seen.add(fd)
        result[name] = fd
    return result


def fromEnvironment(environ: MutableMapping[str, str]) -> Handoff | None:
    """
    Read and remove the marker, so that the application's own subprocesses never
    believe they are a txflip child.

    @return: L{None} for a first generation.
    """
    value = environ.pop(MARKER, None)
    return None if value is None else decode(value)


def tellParentReady(handoff: Handoff) -> None:
    """
    Tell the parent we serve.  A parent that is already gone is not an error: there
    is no one left to tell.
    """
    handoff.readyOpen = False
    try:
        os.write(handoff.readyFD, READY_MESSAGE)
    except OSError:
        pass
    finally:
        os.close(handoff.readyFD)


def tellParentError(readyFD: int, message: str) -> None:
    """
    A child that cannot start says why on the ready pipe C{readyFD} before exiting,
    so that its parent reports the reason, not only an exit status.
    """
    data = ERROR_PREFIX + message.encode("utf-8", "replace")[:MAX_ERROR] + b"\n"
    try:
        if stat.S_ISFIFO(os.fstat(readyFD).st_mode):
            os.write(readyFD, data)
    except OSError:
        pass


@implementer(IReadDescriptor)
class ParentWatcher:
    """
    Watches the C{parent} pipe and calls C{onExit} once, when the parent is gone.

    A pipe whose writer closed is reported by epoll as hang-up, not readable, and
    Twisted then calls L{connectionLost} rather than L{doRead}: both count as
    end-of-file here, or the child would never learn that its parent exited.
    """

    def __init__(self, reactor: Reactor, fd: int, onExit: Callable[[], None]) -> None:
        self._reactor = reactor
        self._fd = fd
        self._onExit: Callable[[], None] | None = onExit
        os.set_blocking(fd, False)
        reactor.addReader(self)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "txflip-parent"

    def doRead(self) -> Failure | None:
        try:
            data = os.read(self._fd, 512)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self._finish()
        return None

    def connectionLost(self, reason: Failure) -> None:
        self._finish()

    def _finish(self) -> None:
        if self._onExit is None:
            return
        onExit, self._onExit = self._onExit, None
        self._reactor.removeReader(self)
        os.close(self._fd)
        onExit()
