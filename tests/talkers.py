"""
Many long-lived line-echo clients in one thread (a selector), for the tests and the
benchmarks of moving connections: thousands of connections without thousands of
threads on a 2-core machine.

Each connection talks, then waits for its echo, then stays silent for a random
time in C{idle} (0 for lock-step), then talks again; with C{split}, each line goes
in two writes a few ms apart (a partial line is in the server when it moves).  What
it counts is what a user would see: an echo that is wrong, duplicated or out of
order (C{wrong}), a line sent and never echoed because the connection ended
(C{lost}), a close by the server (C{closed}), a reset or a timeout (C{errors}).
With C{reconnect}, a closed connection is opened again (as a real client would, and
as draining requires); without it, a closed connection stays closed, so that
C{open} tells how many of the first sockets are still there.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import random
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class TalkStats:
    exchanges: int = 0
    lost: int = 0
    wrong: int = 0
    closed: int = 0
    errors: int = 0
    reconnects: int = 0
    details: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        if len(self.details) < 20:
            self.details.append(what)


def assertKeptTheirSockets(*groups: Talkers, stream: Streamer | None = None) -> None:
    """
    Every connection of C{groups} is still its first socket: never closed, reset
    or timed out, no echo wrong or lost; C{stream} (stopped here) got every line
    back once, in order.
    """
    if stream is not None:
        problem = stream.stop()
        assert problem == "", problem
    for talkers in groups:
        stats = talkers.stats
        untouched = (stats.lost, stats.wrong, stats.closed, stats.errors)
        assert untouched == (0, 0, 0, 0), stats
        assert talkers.open == talkers.count, stats


class _Conn:
    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.seq = 0
        self.expected = b""  # echo still to come
        self.received = b""
        self.toSend = b""  # second half of a split line
        self.sentAt = 0.0
        self.echoedAt = 0.0
        self.token = 0  # bumped on every change: older timers are stale


class Talkers:
    def __init__(
        self,
        host: str,
        port: int,
        count: int,
        idle: tuple[float, float] = (0.0, 0.0),
        *,
        split: bool = False,
        reconnect: bool = False,
        timeout: float = 10.0,
        seed: int = 1,
    ) -> None:
        self.address = (host, port)
        self.count = count
        self.idle = idle
        self.split = split
        self.reconnect = reconnect
        self.timeout = timeout
        self.stats = TalkStats()
        self._random = random.Random(seed)
        self._selector = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._timers: list[tuple[float, int, _Conn, int, str]] = []
        self._counter = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sockets: list[socket.socket] = []

    # -- control, from the test's thread ------------------------------------

    def start(self) -> Talkers:
        for index in range(self.count):
            self._open(index)
        self._thread.start()
        return self

    @property
    def open(self) -> int:
        """How many of the connections are still open (never closed by the server)."""
        return len(self._conns)

    def silentSince(self, when: float) -> int:
        """How many open connections have had no echo since C{when} (monotonic)."""
        return sum(1 for c in list(self._conns.values()) if c.echoedAt < when)

    def stop(self) -> TalkStats:
        self._stop.set()
        self._thread.join(30)
        for conn in list(self._conns.values()):
            conn.sock.close()
        self._selector.close()
        return self.stats

    def __enter__(self) -> Talkers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop -------------------------------------------------------------

    def _open(self, index: int) -> None:
        sock = socket.create_connection(self.address, timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = _Conn(index, sock)
        self._at(conn, time.monotonic() + self._pause(), "talk")
        self._conns[sock.fileno()] = conn
        self.sockets.append(sock)
        self._selector.register(sock, selectors.EVENT_READ, conn)

    def _pause(self) -> float:
        low, high = self.idle
        return self._random.uniform(low, high) if high else 0.0

    def _at(self, conn: _Conn, when: float, what: str) -> None:
        conn.token += 1
        heapq.heappush(
            self._timers, (when, next(self._counter), conn, conn.token, what)
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.002):
                self._read(key.data)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, conn, token, what = heapq.heappop(self._timers)
                if token != conn.token or conn.sock.fileno() == -1:
                    continue
                if what == "talk":
                    self._talk(conn, now)
                elif what == "half":
                    self._at(conn, now + self.timeout, "deadline")
                    self._send(conn, conn.toSend)
                else:
                    self.stats.errors += 1
                    self.stats.lost += 1
                    self.stats.note(f"#{conn.index}: no echo in {self.timeout} s")
                    self._end(conn)

    def _talk(self, conn: _Conn, now: float) -> None:
        conn.seq += 1
        line = f"c{conn.index}-{conn.seq}-{'x' * (conn.seq % 7)}\n".encode()
        conn.expected = line
        conn.received = b""
        conn.sentAt = now
        if self.split:
            cut = len(line) // 2
            conn.toSend = line[cut:]
            self._at(conn, now + 0.003, "half")
            self._send(conn, line[:cut])
        else:
            self._at(conn, now + self.timeout, "deadline")
            self._send(conn, line)

    def _send(self, conn: _Conn, data: bytes) -> None:
        try:
            conn.sock.sendall(data)
        except OSError as e:
            self.stats.errors += 1
            self.stats.lost += 1
            self.stats.note(f"#{conn.index}: send: {e!r}")
            self._end(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            self.stats.errors += 1
            self.stats.lost += bool(conn.expected)
            self.stats.note(f"#{conn.index}: recv: {e!r}")
            self._end(conn)
            return
        if not data:
            self.stats.closed += 1
            if conn.expected:
                self.stats.lost += 1
                self.stats.note(f"#{conn.index}: closed before the echo")
            self._end(conn)
            return
        conn.received += data
        if not conn.expected.startswith(conn.received):
            self.stats.wrong += 1
            self.stats.note(f"#{conn.index}: {conn.received!r} for {conn.expected!r}")
            self._end(conn)
        elif conn.received == conn.expected:
            self.stats.exchanges += 1
            conn.echoedAt = time.monotonic()
            conn.expected = conn.received = b""
            self._at(conn, time.monotonic() + self._pause(), "talk")

    def _end(self, conn: _Conn) -> None:
        conn.token += 1
        self._selector.unregister(conn.sock)
        del self._conns[conn.sock.fileno()]
        conn.sock.close()
        if self.reconnect and not self._stop.is_set():
            try:
                self._open(conn.index)
                self.stats.reconnects += 1
            except OSError as e:
                self.stats.errors += 1
                self.stats.note(f"#{conn.index}: reconnect: {e!r}")


class Streamer:
    """
    One connection that never waits: a thread writes numbered lines as fast as it
    can (each in two writes), another checks that the echoed stream is exactly
    what was sent, in order, each line once.
    """

    def __init__(self, host: str, port: int, pace: float = 0.0005) -> None:
        self.sock = socket.create_connection((host, port), timeout=0.2)
        self.pace = pace
        self.sent = 0
        self.echoed = 0
        self.problem = ""
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._writer.start()
        self._reader.start()

    @staticmethod
    def line(n: int) -> bytes:
        return f"stream-{n}\n".encode()

    def _write(self) -> None:
        try:
            while not self._stop.is_set():
                data = self.line(self.sent + 1)
                self.sock.sendall(data[:4])
                self.sock.sendall(data[4:])
                self.sent += 1
                time.sleep(self.pace)
        except OSError as e:
            self.problem = self.problem or f"send: {e!r}"

    def _read(self) -> None:
        buffer = b""
        quietSince = time.monotonic()
        try:
            while True:
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    if self._stop.is_set() and self.echoed == self.sent:
                        return
                    if time.monotonic() - quietSince > 10:
                        self.problem = self.problem or "no echo for 10 s"
                        return
                    continue
                quietSince = time.monotonic()
                if not data:
                    self.problem = self.problem or "closed by the server"
                    return
                buffer += data
                while b"\n" in buffer:
                    got, buffer = buffer.split(b"\n", 1)
                    if got + b"\n" != self.line(self.echoed + 1):
                        self.problem = f"got {got!r} after line {self.echoed}"
                        return
                    self.echoed += 1
                    if self._stop.is_set() and self.echoed == self.sent:
                        return
        except OSError as e:
            self.problem = self.problem or f"recv: {e!r}"

    def stop(self) -> str:
        """Stop writing, wait for every echo; "" or what went wrong."""
        self._stop.set()
        self._writer.join(10)
        self._reader.join(10)
        if not self.problem and self.echoed != self.sent:
            self.problem = f"{self.sent - self.echoed} lines never echoed"
        self.sock.close()
        return self.problem


@dataclass
class Clients:
    """Every kind of long-lived client, talking to one port (L{everyKind})."""

    lockstep: Talkers
    idle: Talkers
    stream: Streamer


@contextlib.contextmanager
def everyKind(port: int, lockstep: int, idle: int, seed: int) -> Iterator[Clients]:
    """
    C{lockstep} lock-step clients (each line in two writes), C{idle} idle ones
    (silent up to 1 s between lines) and one streaming client on 127.0.0.1:C{port}.
    When the block ends, each of them has kept its first socket and lost nothing
    (L{assertKeptTheirSockets}).
    """
    host = "127.0.0.1"
    with (
        Talkers(host, port, lockstep, split=True) as steps,
        Talkers(host, port, idle, idle=(0.05, 1.0), seed=seed) as idlers,
    ):
        clients = Clients(steps, idlers, Streamer(host, port))
        yield clients
        assertKeptTheirSockets(steps, idlers, stream=clients.stream)
