"""
A single-threaded epoll load generator for line echo servers, much cheaper per
operation than a thread per client.

    python bench/loadgen.py MODE PORT SECONDS CONCURRENCY [RATE]

MODE ``connections``: CONCURRENCY connections in flight, each connect, one line, its
echo, close, and again.  MODE ``lines``: CONCURRENCY long-lived connections, each
sending its next line once the previous one is echoed.  With RATE, operations start
at most RATE times per second (a fixed load, the same for every server); without,
as fast as possible.  Prints JSON: ops, seconds, errors.
"""

from __future__ import annotations

import collections
import errno
import json
import selectors
import socket
import sys
import time

LINE = b"0123456789abcdef0123456789abcdef\n"


class Load:
    def __init__(self, port: int, concurrency: int, rate: float | None) -> None:
        self.port = port
        self.concurrency = concurrency
        self.rate = rate
        self.sel = selectors.EpollSelector()
        self.ops = self.errors = self.started = 0
        self.buffers: dict[socket.socket, bytes] = {}
        self.waiting: collections.deque[socket.socket | None] = collections.deque()
        self.begin = time.monotonic()

    def allowed(self) -> bool:
        if self.rate is None:
            return True
        return self.started < self.rate * (time.monotonic() - self.begin)

    def nextToken(self) -> float:
        """Seconds until the next operation may start."""
        if self.rate is None or not self.waiting:
            return 1.0
        due = self.begin + (self.started + 1) / self.rate
        return max(due - time.monotonic(), 0.0)

    def go(self, sock: socket.socket | None) -> None:
        """Start the next operation (on C{sock}, or a new connection) or queue it."""
        if not self.allowed():
            self.waiting.append(sock)
            return
        self.started += 1
        self.start(sock)

    def start(self, sock: socket.socket | None) -> None:
        raise NotImplementedError

    def event(self, sock: socket.socket, events: int) -> None:
        raise NotImplementedError

    def run(self, seconds: float) -> dict[str, float]:
        end = self.begin + seconds
        while True:
            now = time.monotonic()
            if now >= end:
                break
            while self.waiting and self.allowed():
                self.started += 1
                self.start(self.waiting.popleft())
            timeout = min(end - now, self.nextToken())
            for key, events in self.sel.select(timeout):
                assert isinstance(key.fileobj, socket.socket)
                self.event(key.fileobj, events)
        for sock in list(self.buffers):
            sock.close()
        return {"ops": self.ops, "seconds": seconds, "errors": self.errors}


class Connections(Load):
    def __init__(self, port: int, concurrency: int, rate: float | None) -> None:
        super().__init__(port, concurrency, rate)
        for _ in range(concurrency):
            self.go(None)

    def start(self, sock: socket.socket | None) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", self.port))
        if code not in (0, errno.EINPROGRESS):
            self.errors += 1
            sock.close()
            self.go(None)
            return
        self.buffers[sock] = b""
        self.sel.register(sock, selectors.EVENT_WRITE)

    def done(self, sock: socket.socket) -> None:
        self.sel.unregister(sock)
        del self.buffers[sock]
        sock.close()
        self.go(None)

    def event(self, sock: socket.socket, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.errors += 1
                self.done(sock)
                return
            sock.send(LINE)
            self.sel.modify(sock, selectors.EVENT_READ)
            return
        try:
            data = sock.recv(4096)
        except OSError:
            data = b""
        if data:
            self.buffers[sock] += data
            if not self.buffers[sock].endswith(b"\n"):
                return
            self.ops += 1
        else:
            self.errors += 1
        self.done(sock)


class Lines(Load):
    def __init__(self, port: int, concurrency: int, rate: float | None) -> None:
        super().__init__(port, concurrency, rate)
        socks = []
        for _ in range(concurrency):
            sock = socket.create_connection(("127.0.0.1", port), 5)
            sock.setblocking(False)
            self.buffers[sock] = b""
            self.sel.register(sock, selectors.EVENT_READ)
            socks.append(sock)
        self.begin = time.monotonic()
        for sock in socks:
            self.go(sock)

    def start(self, sock: socket.socket | None) -> None:
        assert sock is not None
        sock.send(LINE)

    def event(self, sock: socket.socket, events: int) -> None:
        data = sock.recv(65536)
        if not data:
            self.errors += 1
            self.sel.unregister(sock)
            return
        self.buffers[sock] += data
        if self.buffers[sock].endswith(b"\n"):
            self.ops += self.buffers[sock].count(b"\n")
            self.buffers[sock] = b""
            self.go(sock)


if __name__ == "__main__":
    mode, port, seconds, concurrency = sys.argv[1:5]
    rate = float(sys.argv[5]) if len(sys.argv) > 5 else None
    kind = Connections if mode == "connections" else Lines
    load = kind(int(port), int(concurrency), rate)
    print(json.dumps(load.run(float(seconds))))
