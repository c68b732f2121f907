"""
The SO_REUSEPORT handoff, for comparison with txflip's inherited sockets.

    python bench/reuseport_echo.py PORT PIDFILE

Each generation binds its own listening socket with C{SO_REUSEPORT}.  On SIGHUP it
starts a copy of itself (same command line), which binds its own socket on the same
port and says "ready" on a pipe; then the old generation closes its own socket and
drains its connections exactly as txflip does (flipecho's protocol, txflip's
C{ConnectionTracker}), and exits.  Only the socket handoff differs from flipecho.

Its known flaw: the kernel spreads new connections over every socket in the group,
and connections waiting in the old socket's accept queue when it closes are reset
(unless C{net.ipv4.tcp_migrate_req} is 1).
"""

from __future__ import annotations

import os
import signal
import socket
import sys

from twisted.internet import reactor as globalReactor
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.python.failure import Failure

from txflip._reactor import asReactor
from txflip.drain._tracker import ConnectionTracker
from txflip.echo import Echo

READY = "REUSEPORT_READY_FD"

#: Twisted types its global reactor as an interface without adoptStreamPort or
#: callFromThread; txflip's Reactor names what this script calls.
reactor = asReactor(globalReactor)


def bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class Generation:
    def __init__(self, port: int, pidfile: str) -> None:
        self.pidfile = pidfile
        self.sock = bind(port)
        self.tracker = ConnectionTracker(Factory.forProtocol(Echo), reactor)
        self.port = reactor.adoptStreamPort(
            self.sock.fileno(), socket.AF_INET, self.tracker
        )
        self.upgrading = False

    def ready(self) -> None:
        temporary = f"{self.pidfile}.{os.getpid()}"
        with open(temporary, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(temporary, self.pidfile)
        fd = os.environ.pop(READY, None)
        if fd is not None:
            os.write(int(fd), b"ready\n")
            os.close(int(fd))

    def upgrade(self) -> None:
        if self.upgrading:
            return
        self.upgrading = True
        env = {**os.environ, READY: "3"}
        reactor.spawnProcess(
            _Child(self),
            sys.executable,
            [sys.executable, *sys.argv],
            env=env,
            childFDs={0: 0, 1: 1, 2: 2, 3: "r"},
        )

    def replaced(self) -> None:
        self.port.stopListening()  # an adopted port: no shutdown()
        self.sock.close()  # the last fd of our socket: queued connections reset
        drained = self.tracker.drain(idleGrace=1.0, timeout=30.0)
        drained.addBoth(lambda _: reactor.stop())


class _Child(ProcessProtocol):
    def __init__(self, generation: Generation) -> None:
        self.generation = generation
        self.ready = False

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 3 and b"ready" in data and not self.ready:
            self.ready = True
            self.generation.replaced()

    def processEnded(self, reason: Failure) -> None:
        if not self.ready:
            self.generation.upgrading = False


def main() -> None:
    generation = Generation(int(sys.argv[1]), sys.argv[2])
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(generation.upgrade))
    reactor.callWhenRunning(generation.ready)
    reactor.run()


if __name__ == "__main__":
    main()
