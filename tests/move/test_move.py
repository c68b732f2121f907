"""
Moving connections, in one process with the real reactor: a real TCP listener, real
client sockets, a real socketpair as the moves channel between an "old" tracker
(which drains) and a "new" one (which receives).  End-to-end tests with real
generations are in test_move_upgrades.py.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.web.server import Site

from txflip.drain._tracker import ConnectionTracker
from txflip.echo import Echo
from txflip.listen._addresses import parseListen
from txflip.listen._fds import bindSocket
from txflip.move._in import Receiver
from txflip.move._movable import ConnectionState, StateRefused
from txflip.move._out import ChannelMover
from txflip.move._transport import checkPrivateAPI
from txflip.move._wire import (
    Accepted,
    Commit,
    FrameReader,
    Move,
    Refused,
    WireError,
    encodeAnswer,
    encodeMove,
)
from txflip.protocols import _webmove  # noqa: F401 - registers IMovable for HTTPChannel

KEY = "tcp:127.0.0.1:0"


class NewEcho(Echo):
    """The new generation's code: the same protocol, told apart by its class."""


class RefusingEcho(Echo):
    def importState(self, state: ConnectionState) -> None:
        raise StateRefused("version from the future")


class Plain(Protocol):
    """No IMovable: must drain, never move."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


def test_privateTwistedApiStillThere() -> None:
    assert checkPrivateAPI() is None


def test_framesRoundTripAndFdsInOrder() -> None:
    r, w = os.pipe()
    reader = FrameReader()
    data = encodeMove(7, "tcp:1.2.3.4:5", ConnectionState(3, b"partial")) + (
        encodeAnswer(Refused(9, "no"))
        + encodeAnswer(Accepted(10))
        + encodeAnswer(Commit(10))
    )
    # Byte by byte: frames complete only when all their bytes are in.
    frames = reader.feed(data[:1], [r])
    for i in range(1, len(data)):
        frames += reader.feed(data[i : i + 1], [])
    assert frames == [
        Move(7, "tcp:1.2.3.4:5", ConnectionState(3, b"partial"), r),
        Refused(9, "no"),
        Accepted(10),
        Commit(10),
    ]
    reader.close()
    os.close(r)
    os.close(w)


def test_badFramesBreakTheChannel() -> None:
    with pytest.raises(WireError, match="without its socket"):
        FrameReader().feed(encodeMove(1, "k", ConnectionState(1, b"")), [])
    with pytest.raises(WireError, match="unknown frame kind"):
        FrameReader().feed(b"\0\0\0\1Z", [])
    with pytest.raises(WireError, match="bad frame length"):
        FrameReader().feed(b"\xff\xff\xff\xff", [])


class World:
    """An old and a new tracker, a listener, clients, and the channel."""

    def __init__(
        self,
        old: type[Protocol] | IProtocolFactory,
        new: type[Protocol] | IProtocolFactory,
    ):
        self.old = ConnectionTracker(factory(old), reactor)
        self.new = ConnectionTracker(factory(new), reactor)
        self.sock = bindSocket(parseListen("tcp:0:interface=127.0.0.1"))
        self.port = listenerOn(self.sock, self.old)
        self.address = self.sock.getsockname()
        self.clients: list[socket.socket] = []
        self.channel = socket.socketpair()

    async def connect(self, count: int) -> None:
        for i in range(count):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(self.address)
            self.clients.append(client)
            if i % 20 == 19:  # let the reactor accept: the backlog is small
                await until(lambda i=i: len(self.old) > i - 20, "accepts")
        await until(lambda: len(self.old) == count, "connections accepted")

    def start(self, trackers: dict[str, ConnectionTracker] | None = None) -> Any:
        self.receiver = Receiver(
            reactor, self.channel[1], (trackers or {KEY: self.new}).get
        )
        self.mover = ChannelMover(reactor, self.channel[0], {self.old: KEY})
        return self.old.drain(1.0, 10.0, self.mover)

    receiver: Receiver | None = None
    mover: ChannelMover | None = None

    def close(self) -> None:
        self.port.stopListening()
        for client in self.clients:
            client.close()
        for tracked in list(self.new._live) + list(self.old._live):
            transport: Any = tracked.transport
            transport.abortConnection()
        if self.receiver is not None:
            self.receiver.close()
        if self.mover is not None:
            self.mover.close()
        self.sock.close()


def listenerOn(sock: socket.socket, tracker: ConnectionTracker) -> IListeningPort:
    adopting: Any = reactor  # IReactorSocket, which Twisted's types do not say
    port: IListeningPort = adopting.adoptStreamPort(
        sock.fileno(), socket.AF_INET, tracker
    )
    return port


def factory(what: type[Protocol] | IProtocolFactory) -> IProtocolFactory:
    return Factory.forProtocol(what) if isinstance(what, type) else what


async def until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        await deferLater(reactor, 0.005, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


async def recvLine(client: socket.socket) -> bytes:
    data = b""

    def line() -> bool:
        nonlocal data
        try:
            chunk = client.recv(4096)
        except BlockingIOError:
            return False
        data += chunk
        return data.endswith(b"\n") or not chunk

    await until(line, "a line")
    return data


def openFDs() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_connectionsMoveWithTheirPartialLine() -> None:
    world = World(Echo, NewEcho)
    try:
        await world.connect(300)
        for client in world.clients:
            client.sendall(b"hello\n")
            assert await recvLine(client) == b"hello\n"
            client.sendall(b"par")
        await deferLater(reactor, 0.05, lambda: None)
        before = openFDs()
        drained = world.start()
        assert await drained == 0
        assert world.mover is not None and world.receiver is not None
        # The old side lets go as it sends each commit; the new side serves each
        # connection once it has read the commit.
        receiver = world.receiver
        await until(lambda: receiver.accepted == 300, "the commits")
        assert world.mover.moved == 300 and world.receiver.accepted == 300
        assert len(world.old) == 0 and len(world.new) == 300
        assert {type(t.wrapped) for t in world.new._live} == {NewEcho}
        # Each socket is open once (the new tracker's): the old copy and the one
        # received are closed.  (The drain fires as the last connection lets go,
        # just before its fd is closed: one turn of the reactor.)
        await deferLater(reactor, 0, lambda: None)
        assert openFDs() == before
        for client in world.clients:
            client.sendall(b"tial\n")
            assert await recvLine(client) == b"partial\n"
    finally:
        world.close()


@pytest_twisted.ensureDeferred
async def test_refusedStateDrainsInTheOldTracker() -> None:
    world = World(Echo, RefusingEcho)
    try:
        await world.connect(5)
        drained = world.start()
        assert world.mover is not None
        await until(lambda: world.mover.refused == 5, "refusals")
        assert len(world.new) == 0 and len(world.old) == 5
        for client in world.clients:
            # Served here still, then closed with the echo (drained as before).
            client.sendall(b"last\n")
            assert await recvLine(client) == b"last\n"
        await drained
        for client in world.clients:
            assert await recvLine(client) == b""
    finally:
        world.close()


@pytest_twisted.ensureDeferred
async def test_protocolWithoutTheInterfaceDrains() -> None:
    world = World(Plain, NewEcho)
    try:
        await world.connect(3)
        drained = world.start()
        await deferLater(reactor, 0.1, lambda: None)
        assert world.mover is not None
        assert world.mover.moved == 0 and len(world.new) == 0
        for client in world.clients:
            client.sendall(b"still here\n")
            assert await recvLine(client) == b"still here\n"
        assert not drained.called
    finally:
        world.close()


@pytest_twisted.ensureDeferred
async def test_unknownListenerIsRefused() -> None:
    world = World(Echo, NewEcho)
    try:
        await world.connect(2)
        world.start(trackers={"some other key": world.new})
        assert world.mover is not None
        await until(lambda: world.mover.refused == 2, "refusals")
        assert len(world.old) == 2
    finally:
        world.close()


@pytest_twisted.ensureDeferred
async def test_brokenChannelBringsConnectionsBack() -> None:
    world = World(Echo, NewEcho)
    try:
        await world.connect(4)
        for client in world.clients:
            client.sendall(b"ab")
        await deferLater(reactor, 0.05, lambda: None)
        # The new generation is gone before it reads anything.
        world.channel[1].close()
        world.receiver = Receiver(reactor, socket.socketpair()[0], lambda key: None)
        world.mover = ChannelMover(reactor, world.channel[0], {world.old: KEY})
        drained = world.old.drain(1.0, 10.0, world.mover)
        assert world.mover is not None
        await until(lambda: not world.mover._channel.open, "the channel to break")
        assert len(world.old) == 4
        for client in world.clients:
            # The partial line was never lost: served here, closed with the echo.
            client.sendall(b"c\n")
            assert await recvLine(client) == b"abc\n"
        await drained
    finally:
        world.close()


def site(body: bytes) -> IProtocolFactory:
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET
    from twisted.web.static import Data

    class Later(Resource):
        """
        Answers C{body} 1 s after the request: a request a resource works on.
        """

        isLeaf = True

        def render_GET(self, request: Any) -> object:
            def answer() -> None:
                request.write(body)
                request.finish()

            request.setHeader(b"content-length", b"%d" % len(body))
            reactor.callLater(1.0, answer)
            return NOT_DONE_YET

    root = Resource()
    root.putChild(b"x", Data(body, "text/plain"))
    root.putChild(b"later", Later())
    return Site(root)


async def httpGet(client: socket.socket) -> bytes:
    client.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    return await httpResponse(client)


async def httpResponse(client: socket.socket) -> bytes:
    data = b""

    def response() -> bool:
        nonlocal data
        try:
            data += client.recv(65536)
        except BlockingIOError:
            return False
        head, _, body = data.partition(b"\r\n\r\n")
        match = re.search(rb"(?i)content-length: (\d+)", head)
        return match is not None and len(body) >= int(match.group(1))

    await until(response, "a response")
    return data


@pytest_twisted.ensureDeferred
async def test_idleHttpKeepaliveConnectionsMove() -> None:
    """
    Idle keep-alive connections move, and so does one in the middle of a
    request's headers (the new code answers it); one whose request a resource
    is working on is answered here, with keep-alive, and moves after it.
    """
    world = World(site(b"old"), site(b"new"))
    try:
        await world.connect(20)
        for client in world.clients:
            assert (await httpGet(client)).endswith(b"old")
        half, busy = world.clients[:2]
        half.sendall(b"GET /x HTTP/1.1\r\nHo")  # half a request: it moves
        busy.sendall(b"GET /later HTTP/1.1\r\nHost: h\r\n\r\n")
        await deferLater(reactor, 0.05, lambda: None)
        drained = world.start()
        assert world.mover is not None
        await until(lambda: world.mover.moved == 19, "19 moves")
        assert len(world.old) == 1  # the one a resource is working on
        half.sendall(b"st: h\r\n\r\n")
        response = await httpResponse(half)
        assert response.endswith(b"new") and b"close" not in response.lower()
        # Answered here, with keep-alive; then it moves too.
        response = await httpResponse(busy)
        assert response.endswith(b"old") and b"close" not in response.lower()
        assert world.mover is not None
        await until(lambda: world.mover.moved == 20, "the last move")
        await drained
        for client in world.clients:
            response = await httpGet(client)
            assert response.endswith(b"new") and b"close" not in response.lower()
    finally:
        world.close()
