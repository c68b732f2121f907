"""
The listening sockets this generation owns: inherited or bound, adopted into the
reactor, and closed by the rules that keep the next generation's copy alive.

Rules, each of which a naive implementation breaks:

  - txflip creates every socket itself and gives the reactor only a duplicate
    (C{adoptStreamPort}/C{adoptDatagramPort}).  A C{listenTCP} port would
    C{shutdown()} the socket on C{stopListening}, killing it in every process that
    shares it.
  - We keep our own fd for each listener: it is the one passed to the next
    generation.
  - Unix stream sockets are accepted here, not by Twisted's Unix port, whose
    C{stopListening} unlinks the path and shuts the shared socket down (and whose
    adoption chmods the path).  Each accepted connection goes to
    C{reactor.adoptStreamConnection}.
  - Closing after a handover only closes our copy; the path of a Unix socket is
    unlinked only when nobody will serve it again (final stop, or a listener the
    next generation's configuration no longer has).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IReactorFDSet,
    IReactorSocket,
    IReadDescriptor,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._addresses import ListenSpec
from ._errors import ListenError
from ._handoff import InheritedListener

_log = Logger()

_REASONS = {
    errno.EADDRINUSE: "address already in use",
    errno.EACCES: "permission denied",
    errno.EADDRNOTAVAIL: "address not available on this machine",
}


def _bindError(spec: ListenSpec, e: OSError) -> ListenError:
    reason = _REASONS.get(e.errno or 0, e.strerror or str(e))
    return ListenError(f"cannot listen on {spec}: {reason}")


def _clearStaleUnixPath(spec: ListenSpec) -> None:
    """
    Remove a socket file nobody listens on any more; refuse anything else at the path.
    """
    try:
        mode = os.lstat(spec.path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenError(
            f"cannot listen on {spec}: the path exists and is not a socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a full accept queue must not hang us
    try:
        probe.connect(spec.path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(spec.path)
    except BlockingIOError:
        raise ListenError(f"cannot listen on {spec}: address already in use") from None
    except OSError as e:
        raise _bindError(spec, e) from None
    else:
        raise ListenError(f"cannot listen on {spec}: address already in use")
    finally:
        probe.close()


def _pathID(path: str) -> tuple[int, int] | None:
    try:
        there = os.lstat(path)
    except OSError:
        return None
    return (there.st_dev, there.st_ino) if stat.S_ISSOCK(there.st_mode) else None


def bindSocket(spec: ListenSpec) -> socket.socket:
    """
    Create, bind and (for streams) listen on a fresh non-blocking socket.

    @raise ListenError: with a one-line reason.
    """
    if spec.kind == "unix":
        _clearStaleUnixPath(spec)
    sock = socket.socket(spec.family, spec.socktype)
    try:
        if spec.kind in ("tcp", "tcp6"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(spec.bindAddress())
        if spec.kind == "unix":
            os.chmod(spec.path, spec.mode)
        if spec.stream:
            sock.listen(spec.backlog)
    except OSError as e:
        sock.close()
        raise _bindError(spec, e) from None
    sock.setblocking(False)
    return sock


@implementer(IReadDescriptor, IListeningPort)
class UnixAcceptor:
    """
    A listening port for a shared Unix stream socket that never unlinks, chmods or
    shuts down the socket: it only accepts, and hands each connection to the
    reactor.
    """

    def __init__(
        self, reactor: IReactorFDSet, sock: socket.socket, factory: IProtocolFactory
    ) -> None:
        self._reactor = reactor
        self._sock = sock
        self._factory = factory
        self._listening = False

    def fileno(self) -> int:
        return self._sock.fileno()

    def logPrefix(self) -> str:
        return f"txflip-unix:{self._sock.getsockname()}"

    def startListening(self) -> None:
        if not self._listening:
            self._listening = True
            self._factory.doStart()
            self._reactor.addReader(self)

    def stopListening(self) -> Deferred[None]:
        if self._listening:
            self._listening = False
            self._reactor.removeReader(self)
            self._factory.doStop()
        return succeed(None)

    def getHost(self) -> IAddress:
        from twisted.internet.address import UNIXAddress

        return UNIXAddress(self._sock.getsockname())

    def doRead(self) -> None:
        adopt: IReactorSocket = self._reactor  # type: ignore[assignment]
        for _ in range(100):
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as e:
                # EMFILE and friends: leave the connection queued, try again on the
                # next readiness; the next generation may take it meanwhile.
                _log.warn(
                    "txflip: accept on {path} failed: {e}",
                    path=self._sock.getsockname(),
                    e=e,
                )
                return
            try:
                adopt.adoptStreamConnection(
                    conn.fileno(), socket.AF_UNIX, cast(Any, self._factory)
                )
            except Exception:  # noqa: BLE001 - one bad connection must not stop us
                _log.failure("txflip: cannot serve a connection on {spec}", spec=self)
            finally:
                conn.close()

    def connectionLost(self, reason: Failure) -> None:
        self.stopListening()


@dataclass(eq=False)
class Listener:
    """
    One listening socket of this generation.

    @ivar spec: the address it is bound to (the real port).
    @ivar requested: the address the configuration asked for.
    @ivar inherited: whether it came from the previous generation.
    """

    spec: ListenSpec
    requested: ListenSpec
    sock: socket.socket
    inherited: bool
    #: Other names it answers to (systemd's C{name=}/C{index=}), kept across
    #: generations.
    aliases: tuple[str, ...] = ()
    port: IListeningPort | None = field(default=None, repr=False)
    _stopping: Deferred[None] | None = field(default=None, repr=False)
    _pathID: tuple[int, int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Remember which file at the path is ours, so that we never unlink a socket
        # someone else bound there since (fstat of a socket fd names the socket,
        # not its path).
        if self.spec.kind == "unix":
            self._pathID = _pathID(self.spec.path)

    def adoptStream(
        self, reactor: IReactorSocket, factory: IProtocolFactory
    ) -> IListeningPort:
        """
        Start accepting connections for C{factory}.
        """
        if self.spec.kind == "unix":
            acceptor = UnixAcceptor(reactor, self.sock, factory)  # type: ignore[arg-type]
            acceptor.startListening()
            self.port = acceptor
        else:
            self.port = reactor.adoptStreamPort(
                self.sock.fileno(), self.spec.family, cast(Any, factory)
            )
        return self.port

    def adoptDatagram(
        self, reactor: IReactorSocket, protocol: DatagramProtocol
    ) -> IListeningPort:
        """
        Start receiving datagrams for C{protocol}.
        """
        if self.spec.kind == "unix":
            raise ListenError(f"cannot serve {self.spec}: not a datagram listener")
        self.port = reactor.adoptDatagramPort(
            self.sock.fileno(), self.spec.family, protocol, maxPacketSize=65535
        )
        return self.port

    def stopListening(self) -> Deferred[None]:
        """
        Stop accepting here; the socket itself lives on in our fd (and in the next
        generation's).  Safe to call more than once, as txflip and an application's
        own service may both do it.
        """
        if self._stopping is None:
            if self.port is None:
                self._stopping = succeed(None)
            else:
                self._stopping = Deferred.fromCoroutine(self._stop(self.port))
        return self._stopping

    async def _stop(self, port: IListeningPort) -> None:
        stopped = port.stopListening()
        if stopped is not None:
            await stopped

    def close(self, unlink: bool) -> None:
        """
        Close our fd, never C{shutdown()}.  Unlink the Unix path only when C{unlink}
        and it is still our socket (not one a successor bound at the same path).
        """
        if self.sock.fileno() == -1:
            return
        if unlink and self._pathID is not None:
            if _pathID(self.spec.path) == self._pathID:
                try:
                    os.unlink(self.spec.path)
                except OSError:
                    pass
        self.sock.close()


class Listeners:
    """
    The listeners of this generation: what the parent passed, and what was asked for.

    A listener is inherited when the parent passed one of the same kind and address;
    a port-0 request matches a listener the parent's configuration also requested
    with port 0 (so "any free port" keeps the port picked at first start across
    upgrades).  Inherited listeners nobody asked for are closed by L{closeUnclaimed}.
    """

    def __init__(self, inherited: list[InheritedListener] | None = None) -> None:
        self._unclaimed: list[InheritedListener] = list(inherited or [])
        self._listeners: list[Listener] = []

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._listeners))

    def __len__(self) -> int:
        return len(self._listeners)

    def _claim(self, spec: ListenSpec) -> InheritedListener | None:
        def same(candidate: ListenSpec) -> bool:
            return (candidate.kind, candidate.host, candidate.path) == (
                spec.kind,
                spec.host,
                spec.path,
            )

        for entry in self._unclaimed:
            if same(entry.spec) and (
                entry.spec.port == spec.port
                or (spec.port == 0 and entry.requested.port == 0)
            ):
                self._unclaimed.remove(entry)
                return entry
        return None

    def listen(self, spec: ListenSpec) -> Listener:
        """
        The listener for C{spec}: inherited if the parent passed it, else bound now.

        @raise ListenError: when binding fails.
        """
        for existing in self._listeners:
            if existing.requested == spec and spec.port != 0:
                raise ListenError(f"cannot listen on {spec}: listed twice")
        entry = self._claim(spec)
        if entry is not None:
            listener = Listener(entry.spec, spec, entry.sock, True, entry.aliases)
        else:
            sock = bindSocket(spec)
            listener = Listener(spec.bound(sock.getsockname()), spec, sock, False)
        self._listeners.append(listener)
        return listener

    def listenAlias(self, alias: str) -> Listener:
        """
        The inherited listener known as C{alias} (C{name=web}, C{index=0}): one
        systemd passed to the first generation, or the parent passed on.

        @raise ListenError: nobody passed such a socket.
        """
        for existing in self._listeners:
            if alias in existing.aliases:
                return existing
        for entry in self._unclaimed:
            if alias in entry.aliases:
                self._unclaimed.remove(entry)
                listener = Listener(
                    entry.spec, entry.requested, entry.sock, True, entry.aliases
                )
                self._listeners.append(listener)
                return listener
        raise ListenError(
            f"cannot listen on systemd:{alias}: no such socket was passed by systemd"
            " (LISTEN_FDS/LISTEN_FDNAMES) or by the previous generation"
        )

    def handoffAliases(self) -> list[tuple[str, ...]]:
        """
        The aliases of L{handoffTable}'s listeners, in the same order.
        """
        return [each.aliases for each in self._listeners if each.sock.fileno() != -1]

    def closeUnclaimed(self, unlink: bool = True) -> list[ListenSpec]:
        """
        Close inherited sockets this generation's configuration did not ask for,
        and (with C{unlink}) remove their Unix paths: nobody will serve them any
        more.  A generation that fails before it serves passes C{unlink=False}: its
        parent still serves those paths.
        """
        closed = []
        for entry in self._unclaimed:
            Listener(entry.spec, entry.requested, entry.sock, True).close(unlink)
            closed.append(entry.spec)
        self._unclaimed = []
        return closed

    def handoffTable(self) -> list[tuple[ListenSpec, socket.socket, ListenSpec]]:
        """
        What to pass to the next generation: every listener still open.
        """
        return [
            (each.spec, each.sock, each.requested)
            for each in self._listeners
            if each.sock.fileno() != -1
        ]

    async def stopListening(self) -> None:
        """
        Stop accepting on every listener (our fds stay open for now).
        """
        for each in self._listeners:
            await each.stopListening()

    def close(self, unlink: bool) -> None:
        """
        Close every fd we hold; C{unlink} Unix paths only if no successor uses them.
        """
        for each in self._listeners:
            each.close(unlink)
        self.closeUnclaimed(unlink)
