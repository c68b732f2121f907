"""
The supervisor's workers: the sockets they share, and one worker's process.

A worker is a generation whose parent is the supervisor: it is started with
L{SpawnAttempt} (ready pipe, parent pipe, every listening socket the supervisor
owns, the handoff marker) plus one end of the L{txflip.run._channel} socket pair, over
which it asks for the addresses it did not inherit.  The supervisor only spawns,
signals and watches workers; it runs none of the application's code.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from txflip.generation._command import Command
from txflip.generation._exits import howItEnded, howItStopped
from txflip.generation._handoff import SUPERVISOR
from txflip.generation._spawn import Spawn, SpawnAttempt
from txflip.listen._addresses import ListenSpec
from txflip.listen._fds import Listener, Listeners
from txflip.move._spawn import CHANNEL_NAME, channelPair
from txflip.run._balance import NAME as BALANCE
from txflip.run._balance import Table
from txflip.run._channel import ChannelServer, socketPair
from txflip.run._stderr import StderrTail, withTail

#: Not passed to workers: the supervisor alone talks to systemd, owns the
#: sockets systemd passed, and is no generation of anything.
PRIVATE_VARIABLES = (
    "NOTIFY_SOCKET",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "TXFLIP_HANDOFF",
    "TXFLIP_TWISTD",
)


class Sockets:
    """
    Every listening socket the supervisor owns, for its whole life: bound at a
    worker's request, or passed by systemd.  Two requests for the same address
    (two workers starting at once, both asking for C{tcp:0}) get the same socket.
    """

    def __init__(self, listeners: Listeners) -> None:
        self.listeners = listeners

    def bind(self, spec: ListenSpec) -> socket.socket:
        existing: Listener
        for existing in self.listeners:
            if existing.requested == spec or (spec.port and existing.spec == spec):
                return existing.sock
        return self.listeners.listen(spec).sock

    def table(self) -> list[Listener]:
        return self.listeners.forNextGeneration()

    def describe(self) -> list[str]:
        return [str(each.spec) for each in self.listeners]


class WorkerProcess(Protocol):
    """
    A worker's process as L{Worker} drives it (a L{SpawnAttempt}, or a fake).
    """

    #: The process's pid (0 until L{started} fires).
    pid: int
    #: Fires with the pid once the process exists (a preloaded worker's pid is
    #: known once its template forked it).
    started: Deferred[int]
    #: Fires with the pid once it is ready, or fails once it is gone before.
    result: Deferred[int]

    def cancel(self) -> object:
        """
        Kill it unless it is ready; L{result} fails once it is gone.
        """

    def signal(self, name: str) -> None:
        """
        Send it C{SIG}C{name}.
        """


class WorkerSpawner(Protocol):
    """
    How a L{Worker} starts its process: the seam that lets the supervisor's
    rules be tested on a fake clock, without processes.
    """

    def __call__(
        self, reactor: Any, spawn: Spawn, afterReady: Callable[[Failure], None]
    ) -> WorkerProcess:
        """
        Start C{spawn}; call C{afterReady} with the reason if it ends after it
        was ready.
        """


def spawnWorker(
    reactor: Any, spawn: Spawn, afterReady: Callable[[Failure], None]
) -> WorkerProcess:
    """
    The real L{WorkerSpawner}: a child process that stays ours (not detached).
    """
    return SpawnAttempt(reactor, spawn, afterReady=afterReady)


class WorkerEvents(Protocol):
    def workerReady(self, worker: Worker) -> None:
        """
        C{worker} serves.
        """

    def workerFailed(self, worker: Worker, reason: str) -> None:
        """
        C{worker} is gone (reaped) without having become ready.
        """

    def workerEnded(self, worker: Worker, how: str) -> None:
        """
        C{worker} is gone (reaped) after it was ready; C{how}: C{exited with
        status 3}, C{was killed by SIGKILL}; when it was retiring and ended as a
        stop does, C{stopped (SIGINT, on request)}.
        """


class Worker:
    """
    One worker process, from spawn to reaped.

    @ivar state: C{starting}, C{ready}, C{stopping}, or C{gone}.
    @ivar retiring: the supervisor asked it to stop (its end is no crash).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        command: Command,
        environ: Mapping[str, str],
        generation: int,
        sockets: Sockets,
        events: WorkerEvents,
        upgradeTimeout: float,
        successorFor: Callable[[Worker], socket.socket | None] = lambda w: None,
        balance: tuple[Table, int] | None = None,
        spawner: WorkerSpawner = spawnWorker,
        counted: Callable[[object], None] = lambda counts: None,
    ) -> None:
        """
        @param balance: the table workers share to spread connections
            (L{txflip.run._balance}), and its fd to pass on; L{None} for none.
        @param spawner: starts the process (L{spawnWorker}, or a fake in tests).
        @param counted: given the counts the worker reports as it finishes.
        """
        self._reactor = reactor
        self._events = events
        self.generation = generation
        self.state = "starting"
        self.retiring = False
        self.startedAt = time.time()
        self.readyAt: float | None = None
        self._kill: IDelayedCall | None = None
        self._gone: list[Deferred[None]] = []
        ours, theirs = socketPair()
        #: The other end of this worker's moves channel, for the older worker
        #: that will move its connections to this one (handed over once).
        self.movesEnd: socket.socket | None
        self.movesEnd, movesTheirs = channelPair()
        extraFDs = {SUPERVISOR: theirs.fileno(), CHANNEL_NAME: movesTheirs.fileno()}
        self._table = balance[0] if balance is not None else None
        if balance is not None:
            extraFDs[BALANCE] = balance[1]
        #: Its stderr, passed on to ours; the tail tells why it failed to start.
        self._stderr = StderrTail(reactor)
        try:
            self._attempt = spawner(
                reactor,
                Spawn(
                    command,
                    environ,
                    generation,
                    sockets.table(),
                    upgradeTimeout,
                    extraFDs,
                    stderr=self._stderr.childEnd,
                ),
                self._endedAfterReady,
            )
        except BaseException:
            ours.close()
            self.movesEnd.close()
            self._stderr.close()
            raise
        finally:
            theirs.close()
            movesTheirs.close()
            self._stderr.started()
        # A worker never forked fails its start; its result says why.
        self._attempt.started.addCallbacks(self._started, lambda _: None)
        self.pid = self._attempt.pid
        self._channel = ChannelServer(
            reactor, ours, sockets.bind, lambda: successorFor(self), counted
        )
        self._attempt.result.addCallbacks(self._ready, self._failed)

    def _started(self, pid: int) -> int:
        self.pid = pid
        self._log.info(
            "txflip run: started worker pid {pid} (generation {generation})",
            pid=pid,
            generation=self.generation,
        )
        if self._table is not None and self.state != "gone":
            # Before the worker looks for itself (it has its application to
            # start); it looks again until it finds itself.  Without a slot it
            # accepts as if there were no table.
            if self._table.claim(pid) is None:
                self._log.warn(
                    "txflip run: no balancing slot for worker pid {pid}:"
                    " it accepts without balancing",
                    pid=pid,
                )
        return pid

    def __repr__(self) -> str:
        return f"<Worker pid={self.pid} generation={self.generation} {self.state}>"

    def _ready(self, pid: int) -> None:
        if self.state == "starting":
            self.state = "ready"
            self.readyAt = time.time()
            self._events.workerReady(self)

    def _failed(self, reason: Failure) -> None:
        self._finish()
        message = withTail(reason.getErrorMessage(), self._stderr.tail())
        self._events.workerFailed(self, message)

    def _endedAfterReady(self, reason: Failure) -> None:
        self._finish()
        how = howItStopped(reason) if self.retiring else howItEnded(reason)
        self._events.workerEnded(self, how)

    def takeMovesEnd(self) -> socket.socket | None:
        """
        The other end of this worker's moves channel, if it serves and nobody
        took it yet.
        """
        if self.state != "ready" or self.retiring:
            return None
        end, self.movesEnd = self.movesEnd, None
        return end

    def _finish(self) -> None:
        self.state = "gone"
        if self._table is not None:
            self._table.release(self.pid)
        self._channel.close()
        if self.movesEnd is not None:
            self.movesEnd.close()
            self.movesEnd = None
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        self._kill = None
        waiters, self._gone = self._gone, []
        for waiter in waiters:
            waiter.callback(None)

    @property
    def uptime(self) -> float:
        return time.time() - (self.readyAt or self.startedAt)

    def retire(self, drainTimeout: float) -> Deferred[None]:
        """
        Stop it gracefully (C{SIGQUIT}: stop accepting, drain, exit); kill it if
        it is still here after C{drainTimeout}.  A worker still starting is killed
        at once.  Fires once it is reaped.
        """
        gone = self.whenGone()
        if self.state == "gone" or self.retiring:
            return gone
        self.retiring = True
        if self.state == "starting":
            self._attempt.cancel()
            return gone
        self.state = "stopping"
        self._attempt.signal("QUIT")
        self._kill = self._reactor.callLater(drainTimeout, self._timedOut, drainTimeout)
        return gone

    def _timedOut(self, drainTimeout: float) -> None:
        self._kill = None
        self._log.warn(
            "txflip run: worker pid {pid} still running {t:g} s after SIGQUIT; killing it",
            pid=self.pid,
            t=drainTimeout,
        )
        self._attempt.signal("KILL")

    def signal(self, name: str) -> None:
        if self.state != "gone":
            self._attempt.signal(name)

    def whenGone(self) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        if self.state == "gone":
            done.callback(None)
        else:
            self._gone.append(done)
        return done

    def status(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "generation": self.generation,
            "state": self.state,
            "started": round(self.startedAt, 3),
            "connections": openConnections(self.pid),
        }


# --- what /proc says about a worker ------------------------------------------------


def _socketInodes(pid: int) -> set[str]:
    inodes = set()
    directory = f"/proc/{pid}/fd"
    for name in os.listdir(directory):
        try:
            target = os.readlink(f"{directory}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


#: An entry of C{/proc/net/unix}: C{Num RefCount Protocol Flags Type St Inode
#: [Path]}; an entry whose path holds a newline goes on over further lines.
_UNIX_ENTRY = re.compile(
    rb"[0-9a-fA-F]+: [0-9A-F]+ [0-9A-F]+ (?P<flags>[0-9A-F]+) [0-9A-F]+"
    rb" (?P<st>[0-9A-F]+) +(?P<inode>[0-9]+)(?: (?P<path>.*))?\n?\Z"
)


def openConnections(pid: int) -> int | None:
    """
    How many connections C{pid} has open: its TCP sockets that are not listening
    (and not closed), and its accepted Unix stream connections (those carry the
    listening socket's path; the supervisor channel has none).  Read from
    C{/proc} (Linux), so it needs no help from the worker; L{None} elsewhere.
    """
    try:
        inodes = _socketInodes(pid)
        # A set: /proc/net/tcp is not read atomically, and a busy table can show
        # one socket twice.
        connected: set[str] = set()
        for table in ("tcp", "tcp6"):
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    # st 01 is ESTABLISHED
                    if fields[9] in inodes and fields[3] == "01":
                        connected.add(fields[9])
        with open(f"/proc/{pid}/net/unix", "rb") as raw:
            for entryLine in raw:
                # Any local user can bind a path holding a newline (or bytes that
                # are not UTF-8): what does not look like an entry continues one.
                entry = _UNIX_ENTRY.match(entryLine)
                if entry is None:
                    continue
                inode = entry["inode"].decode()
                listening = int(entry["flags"], 16) & 0x10000
                if inode in inodes and entry["path"] is not None and not listening:
                    if entry["st"] == b"03":
                        connected.add(inode)
        return len(connected)
    except (OSError, IndexError, ValueError):
        return None
