"""
A generation's metrics (L{txflip.control._metrics.Source}), continued by the next.

Each next generation is started with one end of a Unix socket pair, named
L{CARRY_NAME} in its handoff table (L{txflip.Upgrader.openChannel}, as the moves
channel is).  On it the old generation writes, as JSON lines:

  1. before the child starts, its counts so far and when the upgrade began (the
     child counts the upgrade, with its duration, once it is ready);
  2. after its own drain, its final counts: what its connections became is known
     only then, after the new generation took over.

The child reads the first line at once (it is already there) and the rest when
its parent has exited; its counters are always the last counts its parent sent
plus its own, so they only ever grow.  A parent counts its failed upgrades
itself: a failed child never serves.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.python.failure import Failure

from txflip.control._metrics import Counts

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from txflip.generation._machine import Upgrader

#: The channel's name in the handoff table's C{fds}.
CARRY_NAME = "metrics"
#: How long a child waits for the counts its parent wrote before starting it.
FIRST_TIMEOUT = 2.0
_log = Logger()


def _lines(sock: socket.socket) -> list[bytes]:
    """
    The complete lines readable on C{sock} now, up to end-of-file.
    """
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data.split(b"\n")[:-1]


class GenerationMetrics:
    """
    The counts of one generation of an L{txflip.service.UpgradeService}: those its
    predecessors passed on, and its own.
    """

    def __init__(self, upgrader: Upgrader, connections: Callable[[], int]) -> None:
        self._upgrader = upgrader
        self._connections = connections
        self.own = Counts()
        self._inherited = Counts()
        self._upgradeStarted: float | None = None
        self._successor: socket.socket | None = None
        fd = upgrader.claimInheritedFD(CARRY_NAME)
        if fd is not None:
            self._receiveFirst(socket.socket(fileno=fd))
        upgrader.openChannel(CARRY_NAME, self.spawning)

    def _receiveFirst(self, sock: socket.socket) -> None:
        sock.settimeout(FIRST_TIMEOUT)
        data = b""
        try:
            while not data.endswith(b"\n") and (chunk := sock.recv(65536)):
                data += chunk
            first = json.loads(data)
            self._inherited = Counts.fromWire(first["counts"])
            self._upgradeStarted = float(first["upgradeStarted"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            _log.warn("txflip: the previous generation's metrics are lost: {e}", e=e)
            sock.close()
            return
        sock.setblocking(False)
        self._upgrader.whenParentExited().addCallback(lambda _: self._receiveLast(sock))

    def _receiveLast(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        sock.settimeout(FIRST_TIMEOUT)
        for line in _lines(sock):
            try:
                self._inherited = Counts.fromWire(json.loads(line)["counts"])
            except (ValueError, KeyError, TypeError) as e:
                _log.warn("txflip: bad final metrics from the parent: {e}", e=e)
        sock.close()

    def counts(self) -> Counts:
        return self._inherited.plus(self.own)

    @property
    def generation(self) -> int:
        return self._upgrader.generation

    @property
    def connections(self) -> int:
        return self._connections()

    def workers(self) -> None:
        return None

    def ready(self) -> None:
        """
        This generation serves: the upgrade that started it succeeded.
        """
        if self._upgradeStarted is not None:
            self.own.upgraded("succeeded", time.time() - self._upgradeStarted)
            self._upgradeStarted = None

    def finished(self, drain: Counts) -> None:
        """
        Our drain is over: count it, and pass the final counts on.
        """
        self.own = self.own.plus(drain)
        sock, self._successor = self._successor, None
        if sock is not None:
            self._send(sock)
            sock.close()

    def _send(self, sock: socket.socket, **more: object) -> None:
        line = json.dumps({"counts": self.counts().toWire(), **more}) + "\n"
        try:
            sock.sendall(line.encode())
        except OSError as e:
            _log.warn("txflip: cannot pass the metrics on: {e}", e=e)

    def spawning(self, sock: socket.socket, outcome: Deferred[int]) -> None:
        """
        A next generation starts with the other end of C{sock}: send our counts
        so far, and when the upgrade began; count a failed start ourselves (the
        upgrader closes C{sock} then).
        """
        self._send(sock, upgradeStarted=time.time())

        def spawned(result: int | Failure) -> int | Failure:
            if isinstance(result, Failure):
                self.own.upgraded("failed")
            else:
                self._successor = sock
            return result

        outcome.addBoth(spawned)
