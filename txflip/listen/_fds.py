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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import DatagramProtocol

from txflip._errors import ListenError
from txflip._reactor import asReactor
from txflip.listen._addresses import ListenSpec
from txflip.listen._unix import UnixAcceptor

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


@dataclass(eq=False)
class Listener:
    """
    One listening socket of this generation: bound here, inherited from the
    previous generation, or passed by systemd.  The same object describes it in the
    handoff table, so there is one listener type from bind to handover.

    @ivar spec: the address it is bound to (the real port).
    @ivar requested: the address the configuration asked for (port 0 stays 0), so
        that a next generation with the same configuration finds the same socket.
    @ivar inherited: whether it came from the previous generation (or systemd).
    """

    spec: ListenSpec
    requested: ListenSpec
    sock: socket.socket
    inherited: bool = False
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

    @property
    def open(self) -> bool:
        """
        Whether we still hold its fd (and so can pass it on).
        """
        return self.sock.fileno() != -1

    def adoptStream(self, reactor: object, factory: IProtocolFactory) -> IListeningPort:
        """
        Start accepting connections for C{factory} on C{reactor} (any Twisted
        reactor: it needs C{IReactorSocket} and C{IReactorFDSet}).
        """
        reactor = asReactor(reactor)
        if self.spec.kind == "unix":
            acceptor = UnixAcceptor(reactor, self.sock, factory)
            acceptor.startListening()
            self.port = acceptor
        else:
            self.port = reactor.adoptStreamPort(
                self.sock.fileno(), self.spec.family, factory
            )
        return self.port

    def adoptDatagram(
        self, reactor: object, protocol: DatagramProtocol
    ) -> IListeningPort:
        """
        Start receiving datagrams for C{protocol} (C{reactor}: C{IReactorSocket}).
        """
        reactor = asReactor(reactor)
        if self.spec.stream:
            raise ListenError(
                f"cannot serve datagrams on {self.spec}: not a datagram listener"
            )
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
        if not self.open:
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

    def __init__(
        self,
        inherited: Sequence[Listener] = (),
        *,
        bind: Callable[[ListenSpec], socket.socket] | None = None,
        unlinks: bool = True,
    ) -> None:
        """
        @param bind: makes a socket for an address nobody passed us
            (L{bindSocket}; a supervisor's worker asks the supervisor instead).
        @param unlinks: whether Unix paths may ever be unlinked here (a
            supervisor's worker never does: the paths are the supervisor's).
        """
        self._unclaimed: list[Listener] = list(inherited)
        self._listeners: list[Listener] = []
        self._bind = bind or bindSocket
        self._unlinks = unlinks

    def __iter__(self) -> Iterator[Listener]:
        return iter(list(self._listeners))

    def __len__(self) -> int:
        return len(self._listeners)

    def _claim(self, spec: ListenSpec) -> Listener | None:
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
        The listener for C{spec}: inherited if the parent passed it (or, for a
        C{systemd:} description, systemd did), else bound now.

        @raise ListenError: when binding fails, or no such socket was passed.
        """
        if spec.alias:
            return self._listenAlias(spec.alias)
        for existing in self._listeners:
            if existing.requested == spec and spec.port != 0:
                raise ListenError(f"cannot listen on {spec}: listed twice")
        listener = self._claim(spec)
        if listener is not None:
            # What this generation's configuration asks for is what the next one
            # will be matched against.
            listener.requested = spec
        else:
            sock = self._bind(spec)
            listener = Listener(spec.bound(sock.getsockname()), spec, sock)
        self._listeners.append(listener)
        return listener

    def _listenAlias(self, alias: str) -> Listener:
        """
        The inherited listener known as C{alias} (C{name=web}, C{index=0}): one
        systemd passed to the first generation, or the parent passed on.
        """
        for existing in self._listeners:
            if alias in existing.aliases:
                return existing
        for entry in self._unclaimed:
            if alias in entry.aliases:
                self._unclaimed.remove(entry)
                self._listeners.append(entry)
                return entry
        raise ListenError(
            f"cannot listen on systemd:{alias}: no such socket was passed by systemd"
            " (LISTEN_FDS/LISTEN_FDNAMES) or by the previous generation"
        )

    def closeUnclaimed(self, unlink: bool = True) -> list[ListenSpec]:
        """
        Close inherited sockets this generation's configuration did not ask for,
        and (with C{unlink}) remove their Unix paths: nobody will serve them any
        more.  A generation that fails before it serves passes C{unlink=False}: its
        parent still serves those paths.
        """
        closed = []
        unlink = unlink and self._unlinks
        for entry in self._unclaimed:
            entry.close(unlink)
            closed.append(entry.spec)
        self._unclaimed = []
        return closed

    def forNextGeneration(self) -> list[Listener]:
        """
        What to pass to the next generation: every listener still open.
        """
        return [each for each in self._listeners if each.open]

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
        unlink = unlink and self._unlinks
        for each in self._listeners:
            each.close(unlink)
        self.closeUnclaimed(unlink)
