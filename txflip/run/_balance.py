"""
Spreading connections across the workers of C{txflip run}.

Every worker accepts on the one listening socket the supervisor owns.  Twisted's
epoll reactor is level-triggered, without C{EPOLLEXCLUSIVE}: each connection wakes
every waiting worker, and the one that runs first takes it (and whatever else is
queued: C{tcp.Port} accepts in batches).  Under long-lived connections opened one
after another, one worker of two held 193 of 200, or all of them.

The cure is nginx's C{accept_disabled}: a worker that holds more than its share
stops accepting for a while.  The supervisor makes a small table in shared memory
(a C{memfd}), one slot per worker (pid, open connections, serving, heartbeat), and
passes it to every worker (handoff fd C{balance}).  Each worker writes its own slot
whenever a connection opens or closes, and every L{TICK}; and it stops polling its
listening sockets (C{IReactorFDSet.removeReader}: the socket stays open, its queue
keeps filling) while another serving worker, alive by its heartbeat, holds fewer
connections than it by more than a slack (1 + an eighth); it polls them again as
soon as that is no longer so.  Pausing alone would not spread a burst (a hundred
clients reconnecting at once): one wakeup of C{tcp.Port} accepts up to its
C{numberAccepts} in one go, so before each wakeup a worker caps that to the
connections it may still take (L{limitBatches}: the one private part of Twisted
used here, checked when used and by a test).

A paused worker looks again every L{PAUSED_LOOK}, not every L{TICK}: in a burst,
two workers may each pause on the other's count of a moment ago (one capped batch
each), and the connections then wait in the kernel's queue until one of them looks
again.  Looking every L{TICK} made the 50 connections wrk opens at once wait up to
175-280 ms, with no upgrade at all: the latency spike issue 27 blamed on
C{txflip run}'s upgrades.

Why nothing is refused or lost: pausing closes nothing, connections wait in the
kernel's queue; the worker with the fewest connections never pauses, so some worker
always accepts; a worker that stopped serving says so before it stops listening, a
dead one's slot is cleared by the supervisor when it reaps it, and a hung or killed
one stops counting once its heartbeat is older than L{STALE}.  Every doubt (no
table, no slot, a stale or torn entry) means: accept.

Not C{SO_REUSEPORT}: a worker would need a socket of its own in the group; the
kernel hashes each connection to one socket whatever its owner does, so the
connections queued on the socket of a worker that exits (an upgrade, C{TTOU}, a
crash) are reset unless C{net.ipv4.tcp_migrate_req} (Linux 5.14, a sysctl) is on,
and a worker that hangs keeps receiving its share.  Not a lock passed from worker to
worker (nginx's C{accept_mutex}, uWSGI's thunder lock): a token lost with a dead
worker stops every worker accepting until someone notices.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence

from twisted.internet.interfaces import IDelayedCall, IReadDescriptor
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from txflip._reactor import Reactor
from txflip.drain._served import Served
from txflip.generation._handoff import BALANCE

#: The handoff's name for the table's fd.
NAME = BALANCE
#: Slots, the first of which is the header (how many slots were ever used).
SLOTS = 256
#: The most workers C{txflip run} runs: an upgrade's probation runs twice as many,
#: each with a slot of its own (and each an interpreter: 127 are some 6 GiB).
MAX_WORKERS = (SLOTS - 1) // 2
PID, CONNECTIONS, SERVING, BEAT = range(4)
_FIELDS = 4
_SIZE = SLOTS * _FIELDS * 8
#: How often a worker writes its heartbeat and looks again (seconds).
TICK = 0.05
#: How soon a paused worker looks again (seconds).
PAUSED_LOOK = 0.005
#: A worker whose heartbeat is older than this does not count (nanoseconds).
STALE = 500_000_000
_log = Logger()


def _memoryFile() -> int:
    if hasattr(os, "memfd_create"):
        return os.memfd_create("txflip-balance", os.MFD_CLOEXEC)
    fd, path = tempfile.mkstemp(prefix="txflip-balance-")  # macOS
    os.unlink(path)
    return fd


class Table:
    """
    The shared table: 64-bit cells, each written by one process only (a worker
    its counts, the supervisor its pid), so no lock is needed: a reader that
    sees a half-written slot misjudges for one look at most.
    """

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, _SIZE)  # MAP_SHARED; mmap keeps its own fd
        self.cells = memoryview(self._map).cast("q")

    @classmethod
    def create(cls) -> tuple[Table, int]:
        """
        A new, empty table, and the fd to pass to workers (close-on-exec).
        """
        fd = _memoryFile()
        os.ftruncate(fd, _SIZE)
        return cls(fd), fd

    @classmethod
    def inherited(cls, fd: int) -> Table | None:
        try:
            if os.fstat(fd).st_size < _SIZE:
                return None
            return cls(fd)
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)

    def claim(self, pid: int) -> int | None:
        """
        The slot for worker C{pid} (supervisor side), L{None} if all are taken.
        """
        cells = self.cells
        for slot in range(1, SLOTS):
            base = slot * _FIELDS
            if cells[base + PID] == 0:
                cells[base + CONNECTIONS] = cells[base + SERVING] = 0
                cells[base + BEAT] = 0
                cells[base + PID] = pid
                cells[0] = max(cells[0], slot)
                return slot
        return None

    def release(self, pid: int) -> None:
        """
        Worker C{pid} is gone (supervisor side): nobody defers to it any more.
        """
        slot = self.find(pid)
        if slot is not None:
            self.cells[slot * _FIELDS + SERVING] = 0
            self.cells[slot * _FIELDS + PID] = 0

    def find(self, pid: int) -> int | None:
        cells = self.cells
        for slot in range(1, min(cells[0], SLOTS - 1) + 1):
            if cells[slot * _FIELDS + PID] == pid:
                return slot
        return None

    def fewest(self, slot: int, now: int) -> int | None:
        """
        The fewest connections any other serving, live worker holds.
        """
        cells = self.cells
        fewest = None
        for other in range(1, min(cells[0], SLOTS - 1) + 1):
            base = other * _FIELDS
            if other == slot or cells[base + PID] <= 0 or cells[base + SERVING] != 1:
                continue
            if not 0 <= now - cells[base + BEAT] < STALE:
                continue
            held = cells[base + CONNECTIONS]
            if held >= 0 and (fewest is None or held < fewest):
                fewest = held
        return fewest

    def close(self) -> None:
        self.cells.release()
        self._map.close()


def slack(fewest: int) -> int:
    """
    How many connections more than the fewest a worker may hold and still accept.
    """
    return 1 + fewest // 8


class Balancer:
    """
    One worker's side: writes its slot, pauses and resumes its listening ports.

    @param ports: the listening ports to pause (asked each time: listeners may
        be added while serving).
    @param connections: how many connections this worker holds now.
    """

    def __init__(
        self,
        reactor: Reactor,
        table: Table,
        ports: Callable[[], Iterable[IReadDescriptor]],
        connections: Callable[[], int],
        pid: int | None = None,
    ) -> None:
        self._reactor = reactor
        self._table = table
        self._ports = ports
        self._connections = connections
        self._pid = os.getpid() if pid is None else pid
        self._slot: int | None = None
        self._held = 0
        self._paused: list[IReadDescriptor] = []
        self._limited: list[object] = []
        #: How many connections we may accept before we pause (L{None}: no limit).
        self.allowance: int | None = None
        self._stopped = False
        self._look: IDelayedCall | None = None
        self._loop = LoopingCall(self.check)
        self._loop.clock = reactor  # type: ignore[assignment]

    @property
    def paused(self) -> bool:
        return bool(self._paused)

    def start(self) -> None:
        self._loop.start(TICK, now=True)

    def check(self) -> None:
        """
        Every L{TICK}: write our slot (count, heartbeat) from the trackers, look
        at the others, pause or resume accepting, cap new ports' batches.
        """
        if self._stopped:
            return
        if self._slot is None:
            self._slot = self._table.find(self._pid)
            if self._slot is None:
                return  # not (yet) in the table: accept, as without one
            _log.info("txflip: balancing connections with the other workers")
        self._held = self._connections()
        cells, base = self._table.cells, self._slot * _FIELDS
        cells[base + BEAT] = time.monotonic_ns()
        cells[base + SERVING] = 1
        ports = self._ports()
        for port in ports:
            if port not in self._limited:
                self._limited.append(port)
                limitBatches(port, self._batch)
        self._decide()
        if self._paused:
            self._pause(ports)  # a port added since

    def changed(self, delta: int) -> None:
        """
        A connection opened (+1) or closed (-1): what a tracker calls, so it is
        cheap (alone, a store; else a look at the others when it matters).
        """
        if self._slot is None or self._stopped:
            return
        self._held += delta
        self._table.cells[self._slot * _FIELDS + CONNECTIONS] = self._held
        if (delta > 0 and self.allowance is not None) or (delta < 0 and self._paused):
            self._decide()

    def _decide(self) -> None:
        assert self._slot is not None
        mine = self._held
        self._table.cells[self._slot * _FIELDS + CONNECTIONS] = mine
        fewest = self._table.fewest(self._slot, time.monotonic_ns())
        self.allowance = None if fewest is None else fewest + slack(fewest) - mine + 1
        if self.allowance is not None and self.allowance <= 0:
            if not self._paused:
                self._pause(self._ports())
        elif self._paused:
            paused, self._paused = self._paused, []
            for port in paused:
                self._reactor.addReader(port)

    def _pause(self, ports: Iterable[IReadDescriptor]) -> None:
        for port in ports:
            if port not in self._paused:
                self._reactor.removeReader(port)
                self._paused.append(port)
        if self._look is None:
            self._look = self._reactor.callLater(PAUSED_LOOK, self._lookAgain)

    def _lookAgain(self) -> None:
        self._look = None
        if self._paused and not self._stopped:
            self._decide()
        if self._paused and not self._stopped and self._look is None:
            self._look = self._reactor.callLater(PAUSED_LOOK, self._lookAgain)

    def _batch(self) -> int | None:
        return None if self.allowance is None else max(1, self.allowance)

    def stop(self) -> None:
        """
        We stop serving (just before our ports stop listening): nobody defers to
        us any more, and we never touch the ports again.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._loop.running:
            self._loop.stop()
        if self._look is not None and self._look.active():
            self._look.cancel()
        if self._slot is not None:
            self._table.cells[self._slot * _FIELDS + SERVING] = 0
        self._paused = []  # stopListening unregisters them anyway


def limitBatches(port: object, limit: Callable[[], int | None]) -> bool:
    """
    Before each of C{port}'s wakeups, cap how many connections it accepts in one
    go to C{limit()} (L{None}: leave it).  Twisted's C{tcp.Port} keeps that cap in
    C{numberAccepts} (an undocumented attribute, adapted after every wakeup), and
    txflip's L{txflip.listen._unix.UnixAcceptor} follows suit; anything else is left
    alone, loudly: balancing still works, bursts are spread less.
    """
    if not isinstance(getattr(port, "numberAccepts", None), int):
        _log.warn(
            "txflip: {port!r} has no numberAccepts: accept bursts are not capped",
            port=port,
        )
        return False
    original = getattr(port, "doRead")  # noqa: B009

    def doRead() -> None:
        cap = limit()
        if cap is not None:
            setattr(port, "numberAccepts", cap)  # noqa: B010
        original()

    # An instance attribute: the reactor calls the port's doRead by name.
    setattr(port, "doRead", doRead)  # noqa: B010
    return True


def balanceWorker(
    reactor: Reactor,
    fd: int | None,
    streams: Sequence[Served],
) -> Balancer | None:
    """
    Start balancing a worker's stream listeners (C{streams}, a live list: the
    service's) with the table the supervisor passed as C{fd}; L{None} without
    one (direct mode, C{txflip run --no-balance}).
    """
    table = Table.inherited(fd) if fd is not None else None
    if table is None:
        return None

    def ports() -> list[IReadDescriptor]:
        return [
            IReadDescriptor(each.listener.port)
            for each in streams
            if each.listener.port
        ]

    def connections() -> int:
        total = 0
        for each in streams:
            tracker = each.tracker
            if tracker.onChange is None:  # a listener added since (flip:)
                tracker.onChange = balancer.changed
            total += len(tracker)
        return total

    balancer = Balancer(reactor, table, ports, connections)
    balancer.start()
    return balancer
