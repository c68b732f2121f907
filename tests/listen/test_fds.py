"""
Unit tests for txflip.listen._fds: binding, inheriting, adopting and closing listeners.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol

from tests.harness import isOpen, oneLine
from txflip._errors import ListenError
from txflip._reactor import asReactor
from txflip.listen._addresses import ListenSpec, parseListen
from txflip.listen._fds import Listener, Listeners, bindSocket
from txflip.listen._unix import UnixAcceptor


def _hasIPv6Loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needsIPv6 = pytest.mark.skipif(
    not _hasIPv6Loopback(),
    reason="this machine has no IPv6 loopback (::1):"
    " enable it with sysctl net.ipv6.conf.lo.disable_ipv6=0",
)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """
    A list to put sockets in; every one is closed at the end of the test.
    """
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def connectAndAccept(listening: socket.socket) -> None:
    """
    A raw client can connect to C{listening}, and it accepts the connection.
    """
    client = socket.socket(listening.family, socket.SOCK_STREAM)
    try:
        client.settimeout(5)
        client.connect(listening.getsockname())
        dup = listening.dup()
        try:
            dup.settimeout(5)
            conn, _ = dup.accept()
            conn.close()
        finally:
            dup.close()
    finally:
        client.close()


def refused(spec: ListenSpec, *fragments: str) -> str:
    with pytest.raises(ListenError) as info:
        bindSocket(spec)
    return oneLine(str(info.value), f"cannot listen on {spec}: ", *fragments)


# --- bindSocket -------------------------------------------------------------------


def test_bindTCP(sockets: list[socket.socket]) -> None:
    sock = bindSocket(parseListen("tcp:0:interface=127.0.0.1"))
    sockets.append(sock)
    assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
    assert not sock.getblocking()
    assert not sock.get_inheritable()
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    assert sock.getsockname()[0] == "127.0.0.1" and sock.getsockname()[1] > 0
    connectAndAccept(sock)


@needsIPv6
def test_bindTCP6(sockets: list[socket.socket]) -> None:
    sock = bindSocket(parseListen(r"tcp6:0:interface=\:\:1"))
    sockets.append(sock)
    assert sock.family == socket.AF_INET6 and sock.type == socket.SOCK_STREAM
    assert sock.getsockname()[0] == "::1"
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    connectAndAccept(sock)


def test_bindUnix(sockets: list[socket.socket], tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    old = os.umask(0o077)
    try:
        sock = bindSocket(parseListen(f"unix:{path}:mode=0o640:backlog=3"))
    finally:
        os.umask(old)
    sockets.append(sock)
    assert sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
    assert sock.getsockname() == path
    assert not sock.getblocking()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o640
    connectAndAccept(sock)


def test_bindUnixDefaultMode(sockets: list[socket.socket], tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    old = os.umask(0o077)
    try:
        sockets.append(bindSocket(parseListen(f"unix:{path}")))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o666


def test_bindUDP(sockets: list[socket.socket]) -> None:
    sock = bindSocket(parseListen("udp:0:interface=127.0.0.1"))
    sockets.append(sock)
    assert sock.family == socket.AF_INET and sock.type == socket.SOCK_DGRAM
    assert not sock.getblocking()
    port = sock.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"ping", ("127.0.0.1", port))
        sock.settimeout(5)
        assert sock.recvfrom(10)[0] == b"ping"


@needsIPv6
def test_bindUDP6(sockets: list[socket.socket]) -> None:
    sock = bindSocket(parseListen(r"udp6:0:interface=\:\:1"))
    sockets.append(sock)
    assert sock.family == socket.AF_INET6 and sock.type == socket.SOCK_DGRAM


def test_tcpPortInUse(sockets: list[socket.socket]) -> None:
    first = bindSocket(parseListen("tcp:0:interface=127.0.0.1"))
    sockets.append(first)
    port = first.getsockname()[1]
    refused(parseListen(f"tcp:{port}:interface=127.0.0.1"), "address already in use")


def test_tcpPortInUseByForeignSocket(sockets: list[socket.socket]) -> None:
    """
    Also when the other socket did not set SO_REUSEADDR.
    """
    other = socket.socket()
    sockets.append(other)
    other.bind(("127.0.0.1", 0))
    other.listen(1)
    port = other.getsockname()[1]
    refused(parseListen(f"tcp:{port}:interface=127.0.0.1"), "address already in use")


def test_udpPortInUse(sockets: list[socket.socket]) -> None:
    first = bindSocket(parseListen("udp:0:interface=127.0.0.1"))
    sockets.append(first)
    port = first.getsockname()[1]
    refused(parseListen(f"udp:{port}:interface=127.0.0.1"), "address already in use")


def test_addressNotAvailable() -> None:
    # TEST-NET-1 (RFC 5737) is not configured on any interface here.
    refused(parseListen("tcp:0:interface=192.0.2.1"), "address not available")


def test_unixPathIsRegularFile(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    path.write_text("data")
    refused(parseListen(f"unix:{path}"), "the path exists and is not a socket")
    assert path.read_text() == "data"


def test_unixPathIsSymlinkToSocket(
    sockets: list[socket.socket], tmp_path: Path
) -> None:
    """
    A symlink is not a socket: refused, not followed.
    """
    real = str(tmp_path / "real.sock")
    sockets.append(bindSocket(parseListen(f"unix:{real}")))
    link = tmp_path / "link.sock"
    link.symlink_to(real)
    refused(parseListen(f"unix:{link}"), "not a socket")
    assert link.is_symlink()


def unixSocket(sockets: list[socket.socket], path: str | None = None) -> socket.socket:
    """
    A Unix stream socket, closed after the test; bound to C{path} if given.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sockets.append(sock)
    if path is not None:
        sock.bind(path)
    return sock


def test_unixStaleSocketReplaced(sockets: list[socket.socket], tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    unixSocket(sockets, path).close()  # the file stays, nobody listens
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    sock = bindSocket(parseListen(f"unix:{path}"))
    sockets.append(sock)
    connectAndAccept(sock)


def test_unixBoundButNotListeningIsStale(
    sockets: list[socket.socket], tmp_path: Path
) -> None:
    path = str(tmp_path / "s.sock")
    unixSocket(sockets, path)  # bound, never listening: connect is refused
    sock = bindSocket(parseListen(f"unix:{path}"))
    sockets.append(sock)
    connectAndAccept(sock)


def test_unixLiveSocketInUse(sockets: list[socket.socket], tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    live = bindSocket(parseListen(f"unix:{path}"))
    sockets.append(live)
    refused(parseListen(f"unix:{path}"), "address already in use")
    # The live one is untouched.
    assert os.path.exists(path)
    connectAndAccept(live)


class _Hung(Exception):
    pass


def test_unixLiveSocketWithFullQueue(
    sockets: list[socket.socket], tmp_path: Path
) -> None:
    path = str(tmp_path / "s.sock")
    unixSocket(sockets, path).listen(1)
    for _ in range(100):  # fill the accept queue
        client = unixSocket(sockets)
        client.setblocking(False)
        try:
            client.connect(path)
        except BlockingIOError:
            break
    else:
        pytest.fail("could not fill the accept queue")

    def hung(signum: int, frame: object) -> None:
        raise _Hung()

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        refused(parseListen(f"unix:{path}"), "address already in use")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_unixMissingDirectory(tmp_path: Path) -> None:
    refused(parseListen(f"unix:{tmp_path}/missing/s.sock"), "No such file")


# --- Listener.close -----------------------------------------------------------------


def unixListener(path: str) -> Listener:
    spec = parseListen(f"unix:{path}")
    sock = bindSocket(spec)
    return Listener(spec, spec, sock, inherited=False)


def test_closeUnlinksOwnPath(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    listener = unixListener(path)
    fd = listener.sock.fileno()
    listener.close(unlink=True)
    assert not os.path.exists(path)
    assert listener.sock.fileno() == -1
    assert not isOpen(fd)
    listener.close(unlink=True)  # twice is fine


def test_closeKeepsPathWithoutUnlink(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    listener = unixListener(path)
    listener.close(unlink=False)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_closeDoesNotUnlinkSuccessorsSocket(
    sockets: list[socket.socket], tmp_path: Path
) -> None:
    """
    A different socket bound at the path since (a successor's) is left alone.
    """
    path = str(tmp_path / "s.sock")
    listener = unixListener(path)
    os.unlink(path)
    successor = bindSocket(parseListen(f"unix:{path}"))
    sockets.append(successor)
    listener.close(unlink=True)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    connectAndAccept(successor)


def test_closeDoesNotUnlinkRegularFile(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    listener = unixListener(str(path))
    os.unlink(path)
    path.write_text("someone else's")
    listener.close(unlink=True)
    assert path.read_text() == "someone else's"


def test_closeNeverShutsDown(sockets: list[socket.socket]) -> None:
    """
    Closing our copy leaves a duplicate (the next generation's) listening.
    """
    spec = parseListen("tcp:0:interface=127.0.0.1")
    sock = bindSocket(spec)
    other = sock.dup()
    sockets.append(other)
    Listener(spec.bound(sock.getsockname()), spec, sock, False).close(unlink=True)
    connectAndAccept(other)


# --- Listeners: inheriting ------------------------------------------------------------


def inherited(
    sockets: list[socket.socket], requested: ListenSpec, tmp_path: Path | None = None
) -> Listener:
    """
    What a parent would pass: a real bound socket for C{requested}.
    """
    sock = bindSocket(requested)
    sockets.append(sock)
    return Listener(requested.bound(sock.getsockname()), requested, sock, True)


def test_listenBindsWhenNothingInherited(sockets: list[socket.socket]) -> None:
    listeners = Listeners()
    listener = listeners.listen(parseListen("tcp:0:interface=127.0.0.1"))
    sockets.append(listener.sock)
    assert not listener.inherited
    assert listener.spec.port == listener.sock.getsockname()[1] != 0
    assert listener.requested.port == 0
    assert list(listeners) == [listener] and len(listeners) == 1


def test_listenClaimsSameAddress(sockets: list[socket.socket]) -> None:
    entry = inherited(sockets, parseListen("tcp:0:interface=127.0.0.1"))
    port = entry.spec.port
    listeners = Listeners([entry])
    wanted = parseListen(f"tcp:{port}:interface=127.0.0.1")
    listener = listeners.listen(wanted)
    assert listener.inherited
    assert listener.sock is entry.sock
    assert listener.spec == entry.spec
    assert listener.requested == wanted
    assert listeners.closeUnclaimed() == []


def test_listenPortZeroClaimsPortZeroEntry(sockets: list[socket.socket]) -> None:
    entry = inherited(sockets, parseListen("tcp:0:interface=127.0.0.1"))
    listeners = Listeners([entry])
    listener = listeners.listen(parseListen("tcp:0:interface=127.0.0.1"))
    assert listener.inherited and listener.sock is entry.sock
    assert listener.spec.port == entry.spec.port
    assert listener.requested.port == 0
    # The next generation is told the request was port 0 again.
    [passed] = listeners.forNextGeneration()
    assert (passed.spec, passed.sock, passed.requested) == (
        entry.spec,
        entry.sock,
        listener.requested,
    )


def test_listenPortZeroDoesNotClaimExplicitPort(
    sockets: list[socket.socket],
) -> None:
    """
    An entry the parent configured with an explicit port is not "any free port".
    """
    probe = bindSocket(parseListen("tcp:0:interface=127.0.0.1"))
    port = probe.getsockname()[1]
    probe.close()
    entry = inherited(sockets, parseListen(f"tcp:{port}:interface=127.0.0.1"))
    listeners = Listeners([entry])
    listener = listeners.listen(parseListen("tcp:0:interface=127.0.0.1"))
    sockets.append(listener.sock)
    assert not listener.inherited
    assert listener.spec.port != port
    assert listeners.closeUnclaimed() == [entry.spec]


def test_listenExplicitPortClaimsPortZeroEntry(sockets: list[socket.socket]) -> None:
    """
    Asking for the port a port-0 listener happens to have is the same socket.
    """
    entry = inherited(sockets, parseListen("tcp:0:interface=127.0.0.1"))
    listeners = Listeners([entry])
    listener = listeners.listen(
        parseListen(f"tcp:{entry.spec.port}:interface=127.0.0.1")
    )
    assert listener.inherited and listener.sock is entry.sock


@pytest.mark.parametrize(
    "other",
    [
        "tcp:{port}:interface=127.0.0.2",
        "udp:{port}:interface=127.0.0.1",
        "tcp:0:interface=127.0.0.2",
    ],
)
def test_listenDifferentAddressNotClaimed(
    sockets: list[socket.socket], other: str
) -> None:
    entry = inherited(sockets, parseListen("tcp:0:interface=127.0.0.1"))
    listeners = Listeners([entry])
    spec = parseListen(other.format(port=entry.spec.port))
    listener = listeners.listen(spec)
    sockets.append(listener.sock)
    assert not listener.inherited
    assert listener.sock is not entry.sock
    assert listeners.closeUnclaimed() == [entry.spec]


def test_listenTwoPortZeroEntries(sockets: list[socket.socket]) -> None:
    first = inherited(sockets, parseListen("tcp:0:interface=127.0.0.1"))
    second = inherited(sockets, parseListen("tcp:0:interface=127.0.0.1"))
    listeners = Listeners([first, second])
    a = listeners.listen(parseListen("tcp:0:interface=127.0.0.1"))
    b = listeners.listen(parseListen("tcp:0:interface=127.0.0.1"))
    assert {a.sock, b.sock} == {first.sock, second.sock}
    assert a.inherited and b.inherited


def test_listenUnixClaimsSamePath(sockets: list[socket.socket], tmp_path: Path) -> None:
    entry = inherited(sockets, parseListen(f"unix:{tmp_path}/s.sock"))
    listeners = Listeners([entry])
    listener = listeners.listen(parseListen(f"unix:{tmp_path}/s.sock"))
    assert listener.inherited and listener.sock is entry.sock


def test_listenedTwice(sockets: list[socket.socket]) -> None:
    probe = bindSocket(parseListen("tcp:0:interface=127.0.0.1"))
    port = probe.getsockname()[1]
    probe.close()
    listeners = Listeners()
    spec = parseListen(f"tcp:{port}:interface=127.0.0.1")
    first = listeners.listen(spec)
    sockets.append(first.sock)
    with pytest.raises(ListenError) as info:
        listeners.listen(spec)
    assert str(info.value) == f"cannot listen on {spec}: listed twice"
    assert len(listeners) == 1


def test_portZeroTwiceIsTwoListeners(sockets: list[socket.socket]) -> None:
    listeners = Listeners()
    a = listeners.listen(parseListen("tcp:0:interface=127.0.0.1"))
    b = listeners.listen(parseListen("tcp:0:interface=127.0.0.1"))
    sockets.extend([a.sock, b.sock])
    assert a.spec.port != b.spec.port


def test_listenBindErrorPropagates(sockets: list[socket.socket]) -> None:
    other = bindSocket(parseListen("tcp:0:interface=127.0.0.1"))
    sockets.append(other)
    listeners = Listeners()
    with pytest.raises(ListenError, match="address already in use"):
        listeners.listen(
            parseListen(f"tcp:{other.getsockname()[1]}:interface=127.0.0.1")
        )
    assert len(listeners) == 0


def test_closeUnclaimedClosesAndUnlinks(
    sockets: list[socket.socket], tmp_path: Path
) -> None:
    path = str(tmp_path / "gone.sock")
    unix = inherited(sockets, parseListen(f"unix:{path}"))
    tcp = inherited(sockets, parseListen("tcp:0:interface=127.0.0.1"))
    kept = inherited(sockets, parseListen("tcp:0:interface=127.0.0.2"))
    listeners = Listeners([unix, tcp, kept])
    listeners.listen(parseListen("tcp:0:interface=127.0.0.2"))
    assert listeners.closeUnclaimed() == [unix.spec, tcp.spec]
    assert unix.sock.fileno() == -1 and tcp.sock.fileno() == -1
    assert kept.sock.fileno() != -1
    assert not os.path.exists(path)
    assert listeners.closeUnclaimed() == []


def test_forNextGenerationSkipsClosed(sockets: list[socket.socket]) -> None:
    listeners = Listeners()
    a = listeners.listen(parseListen("tcp:0:interface=127.0.0.1"))
    b = listeners.listen(parseListen("udp:0:interface=127.0.0.1"))
    sockets.extend([a.sock, b.sock])
    a.close(unlink=False)
    assert listeners.forNextGeneration() == [b]


def test_listenersClose(sockets: list[socket.socket], tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    listeners = Listeners()
    a = listeners.listen(parseListen(f"unix:{path}"))
    listeners.close(unlink=False)
    assert a.sock.fileno() == -1
    assert os.path.exists(path)


def test_listenersCloseUnlinks(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    listeners = Listeners()
    listeners.listen(parseListen(f"unix:{path}"))
    listeners.close(unlink=True)
    assert not os.path.exists(path)


# --- adopting into the reactor (real reactor) ------------------------------------------


class _Echo(Protocol):
    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class _Client(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.gotData: Deferred[bytes] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\n" in self.received and not self.gotData.called:
            self.gotData.callback(self.received)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class _Factory(Factory):
    protocol = _Echo

    def __init__(self) -> None:
        self.events: list[str] = []
        self.connections: list[_Echo] = []

    def doStart(self) -> None:
        self.events.append("start")

    def doStop(self) -> None:
        self.events.append("stop")


async def _echoOnce(endpoint: Any, factory: _Factory, line: bytes = b"hello\n") -> None:
    """
    One exchange through C{endpoint} with a server built by C{factory}; returns
    once both ends are closed.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import connectProtocol

    client = _Client()
    served = len(factory.connections)
    await connectProtocol(endpoint, client).addTimeout(10, reactor)
    client.transport.write(line)  # type: ignore[union-attr]
    got = await client.gotData.addTimeout(10, reactor)
    assert got == line
    assert len(factory.connections) == served + 1
    client.transport.loseConnection()  # type: ignore[union-attr]
    await client.lost.addTimeout(10, reactor)
    await factory.connections[-1].lost.addTimeout(10, reactor)


@pytest_twisted.ensureDeferred
async def test_unixAcceptorEndToEnd(tmp_path: Path) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import UNIXClientEndpoint

    path = str(tmp_path / "s.sock")
    spec = parseListen(f"unix:{path}:mode=0o600")
    listener = Listener(spec, spec, bindSocket(spec), inherited=False)
    try:
        factory = _Factory()
        port = listener.adoptStream(reactor, factory)
        assert isinstance(port, UnixAcceptor)
        assert listener.port is port
        host = port.getHost()
        assert isinstance(host, UNIXAddress)
        assert host.name in (path.encode(), path)
        assert factory.events == ["start"]
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600

        endpoint = UNIXClientEndpoint(reactor, path)
        await _echoOnce(endpoint, factory)
        await _echoOnce(endpoint, factory, b"one\ntwo\n")

        await listener.stopListening()
        assert factory.events == ["start", "stop"]
        # Idempotent: same Deferred, no second doStop.
        assert listener.stopListening() is listener.stopListening()
        assert factory.events == ["start", "stop"]

        # The path is still there, its mode untouched, and the socket listens.
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert listener.sock.fileno() != -1
        assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        connectAndAccept(listener.sock)

        # A second acceptor on the same socket (as the next generation would have).
        again = UnixAcceptor(asReactor(reactor), listener.sock, factory)
        again.startListening()
        try:
            await _echoOnce(endpoint, factory)
        finally:
            await again.stopListening()
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    finally:
        listener.close(unlink=True)
    assert not os.path.exists(path)


@pytest_twisted.ensureDeferred
async def test_tcpAdoptedStopListeningKeepsSocket() -> None:
    """
    A TCP listener adopted into the reactor, then stopped, still listens in our
    fd: Twisted only closed its duplicate, it did not shutdown() the socket.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    spec = parseListen("tcp:0:interface=127.0.0.1")
    sock = bindSocket(spec)
    listener = Listener(spec.bound(sock.getsockname()), spec, sock, inherited=False)
    try:
        factory = _Factory()
        listener.adoptStream(reactor, factory)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", listener.spec.port)
        await _echoOnce(endpoint, factory)
        first = listener.stopListening()
        assert listener.stopListening() is first
        await first
        assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        connectAndAccept(listener.sock)
    finally:
        listener.close(unlink=False)


def test_stopListeningWithoutPort(sockets: list[socket.socket]) -> None:
    spec = parseListen("tcp:0:interface=127.0.0.1")
    sock = bindSocket(spec)
    sockets.append(sock)
    listener = Listener(spec, spec, sock, inherited=False)
    d = listener.stopListening()
    assert d.called


def test_adoptDatagramRefusesUnix(tmp_path: Path) -> None:
    from twisted.internet.protocol import DatagramProtocol
    from twisted.internet.testing import MemoryReactor

    listener = unixListener(str(tmp_path / "s.sock"))
    try:
        with pytest.raises(ListenError, match="not a datagram listener"):
            listener.adoptDatagram(MemoryReactor(), DatagramProtocol())
    finally:
        listener.close(unlink=True)


def test_unixAcceptorWithFakeReactor(tmp_path: Path) -> None:
    """
    Each accepted connection goes to adoptStreamConnection; our copy of it is
    closed afterwards; an empty queue just returns.
    """
    from twisted.internet.testing import MemoryReactor

    adopted: list[tuple[int, socket.AddressFamily, object, bool]] = []

    class Reactor(MemoryReactor):
        def adoptStreamConnection(self, fd: int, family: Any, factory: Any) -> None:
            adopted.append((fd, family, factory, isOpen(fd)))

    reactor = Reactor()
    listener = unixListener(str(tmp_path / "s.sock"))
    factory = _Factory()
    try:
        acceptor = UnixAcceptor(asReactor(reactor), listener.sock, factory)
        acceptor.startListening()
        acceptor.startListening()
        assert factory.events == ["start"]
        assert acceptor in reactor.getReaders()
        clients = [socket.socket(socket.AF_UNIX) for _ in range(3)]
        for c in clients:
            c.connect(listener.spec.path)
        acceptor.doRead()
        assert [(family, f, wasOpen) for _, family, f, wasOpen in adopted] == [
            (socket.AF_UNIX, factory, True)
        ] * 3
        acceptor.doRead()  # nothing queued: no error
        assert len(adopted) == 3
        for c in clients:
            c.close()
        acceptor.connectionLost(None)  # type: ignore[arg-type]
        assert acceptor not in reactor.getReaders()
        assert factory.events == ["start", "stop"]
    finally:
        listener.close(unlink=True)


def test_unixAcceptorSurvivesFailingConnection(tmp_path: Path) -> None:
    from twisted.internet.testing import MemoryReactor

    adopted: list[int] = []

    class Reactor(MemoryReactor):
        def adoptStreamConnection(self, fd: int, family: Any, factory: Any) -> None:
            factory.buildProtocol(None)
            adopted.append(fd)

    class Flaky(_Factory):
        def buildProtocol(self, addr: Any) -> Protocol:
            if not self.events.count("built"):
                self.events.append("built")
                raise RuntimeError("application bug for one connection")
            return _Echo()

    reactor = Reactor()
    listener = unixListener(str(tmp_path / "s.sock"))
    clients = [socket.socket(socket.AF_UNIX) for _ in range(2)]
    try:
        acceptor = UnixAcceptor(asReactor(reactor), listener.sock, Flaky())
        acceptor.startListening()
        for c in clients:
            c.connect(listener.spec.path)
        acceptor.doRead()
        assert len(adopted) == 1
        assert acceptor in reactor.getReaders()
    finally:
        for c in clients:
            c.close()
        listener.close(unlink=True)


def test_closeWithoutUnlinkKeepsUnclaimedPaths(tmp_path: Path) -> None:
    """
    A generation that fails before it serves closes what it inherited without
    removing the Unix paths: its parent still serves them.
    """
    spec = parseListen(f"unix:{tmp_path / 'parent.sock'}")
    sock = bindSocket(spec)
    listeners = Listeners([Listener(spec, spec, sock, True)])
    listeners.close(unlink=False)
    assert sock.fileno() == -1
    assert os.path.exists(spec.path)
