"""
C{txflip check}: prove, against your own running server, that upgrades lose nothing.

It puts a line-echo load on the server (short-lived clients: connect, one line, its
echo, close; long-lived clients: one connection each, a line every few milliseconds,
reconnecting when the server closes it), sends the server C{SIGHUP} a number of
times, waits for each upgrade to complete (the pid file names a new live pid and the
old pid is gone), and reports every error the clients saw, every line that was sent
but never echoed, and how long the upgrades took.

The clients are plain threads with blocking sockets, not Twisted: a verifier observes
the server from the outside, like real clients, so that a bug in the reactor or in
txflip cannot also hide itself from the measurement.  The test suite's harness uses
the same clients.  For the same reason, and because it is the harness's API, this
module follows PEP 8 names rather than Twisted's camelCase.

Every wait is bounded: each connect and each echo by C{--io-timeout}, each upgrade by
C{--upgrade-timeout}, the load by C{--duration}.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import operator
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from ._cli import argNumber, argSeconds
from ._pidfile import pidAlive as pid_alive

if TYPE_CHECKING:
    from typing_extensions import Self

#: Error kinds counted by L{Stats}; C{other} catches the unexpected so that a client
#: thread never dies silently.
ERROR_KINDS = ("refused", "reset", "timeout", "short_read", "wrong_echo", "other")

#: Exit statuses.
OK, FAILED, BAD_INPUT = 0, 1, 2

_MAX_SAMPLES = 20  # error descriptions kept per Stats, for diagnostics
_POLL = 0.002  # seconds between looks at the pid file and /proc while upgrading
_PROBE = b"txflip-check-probe\n"


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


def read_pidfile(path: str | os.PathLike[str]) -> int | None:
    """
    The pid in C{path}, or None if missing, empty or garbage.

    Pid files are polled while they are being replaced, so every failure simply
    means "no pid yet".
    """
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(64).strip()
    except OSError:
        return None
    try:
        pid = int(text)
    except ValueError:
        return None
    return pid if pid > 0 else None


def children_of(pid: int) -> set[int]:
    """
    The pids of C{pid}'s children (Linux C{/proc}; empty elsewhere or when gone).
    """
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                found.update(int(each) for each in f.read().split())
        except (OSError, ValueError):
            continue
    return found


# --------------------------------------------------------------------------
# Counters
# --------------------------------------------------------------------------


class Latencies:
    """
    A latency distribution in bounded memory: log-spaced buckets 1% wide (from
    1 microsecond up), plus the exact count and maximum.  Quantiles are accurate to
    1%, however long the run.
    """

    _BASE = 1e-6
    _LOG_GROWTH = math.log(1.01)

    def __init__(self) -> None:
        self.count = 0
        self.max = 0.0
        self._buckets: dict[int, int] = {}

    def add(self, seconds: float) -> None:
        """Record one latency."""
        index = 0
        if seconds > self._BASE:
            index = int(math.log(seconds / self._BASE) / self._LOG_GROWTH) + 1
        self._buckets[index] = self._buckets.get(index, 0) + 1
        self.count += 1
        self.max = max(self.max, seconds)

    def merge(self, other: Latencies) -> Latencies:
        """A new distribution holding both."""
        merged = self.copy()
        for index, n in other._buckets.items():
            merged._buckets[index] = merged._buckets.get(index, 0) + n
        merged.count += other.count
        merged.max = max(merged.max, other.max)
        return merged

    def copy(self) -> Latencies:
        copied = Latencies()
        copied.count, copied.max = self.count, self.max
        copied._buckets = dict(self._buckets)
        return copied

    def quantile(self, q: float) -> float | None:
        """The C{q} quantile (0 < q <= 1), or None without samples."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                upper = self._BASE * math.exp(index * self._LOG_GROWTH)
                return min(upper, self.max)
        return self.max  # pragma: no cover - rank <= count


@dataclasses.dataclass
class Counters:
    """
    Thread-safe counters for a group of load clients; a subclass names its error
    kinds (C{int} fields: the common ones here, its own added; all listed in
    C{kinds}, in the order the report shows them) and its unit of work.

    Every C{lost} exchange is also counted under the error kind that lost it, so
    L{errors_total} does not add C{lost} in again.  C{closed_by_server} counts clean
    closes between exchanges (not errors).  C{exchanges} is the number of exchanges
    that went right.  Each L{Latencies} field is a distribution the report shows.
    """

    #: The error kinds: names of C{int} fields.
    kinds: ClassVar[tuple[str, ...]] = ()
    #: What one exchange is, in the report: "lines", "requests".
    unit: ClassVar[str] = "exchanges"
    #: The report's label for C{exchanges}.
    done_label: ClassVar[str] = "exchanges"

    connections: int = 0
    exchanges: int = 0
    lost: int = 0
    closed_by_server: int = 0
    # The error kinds every client can see:
    refused: int = 0
    reset: int = 0
    timeout: int = 0
    other: int = 0
    samples: list[str] = dataclasses.field(default_factory=list)
    connect_latency: Latencies = dataclasses.field(
        default_factory=Latencies, repr=False, compare=False
    )
    _lock: threading.Lock = dataclasses.field(
        default_factory=threading.Lock, repr=False, compare=False
    )

    def add(self, name: str, n: int = 1) -> None:
        """Increment counter C{name} by C{n} atomically."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def connected(self, seconds: float) -> None:
        """Count one connection that took C{seconds} to establish."""
        with self._lock:
            self.connections += 1
            self.connect_latency.add(seconds)

    def error(self, kind: str, detail: str, *, lost: bool = False) -> None:
        """Count one error of C{kind} (and a lost exchange if C{lost})."""
        assert kind in self.kinds, kind
        with self._lock:
            setattr(self, kind, getattr(self, kind) + 1)
            if lost:
                self.lost += 1
            if len(self.samples) < _MAX_SAMPLES:
                self.samples.append(f"{kind}: {detail}")

    def errors_total(self) -> int:
        """Number of errors of all kinds."""
        with self._lock:
            return sum(getattr(self, k) for k in self.kinds)

    def latencies(self) -> dict[str, Latencies]:
        """Each distribution by name (C{connect_latency} is C{"connect"})."""
        return {
            f.name.removesuffix("_latency"): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name.endswith("_latency")
        }

    def snapshot(self) -> Self:
        """A consistent copy that no longer changes."""
        with self._lock:
            copies: dict[str, Any] = {
                f"{name}_latency": latency.copy()
                for name, latency in self.latencies().items()
            }
            return dataclasses.replace(
                self, samples=list(self.samples), _lock=threading.Lock(), **copies
            )

    def __add__(self, other: Self) -> Self:
        a, b = self.snapshot(), other.snapshot()
        merged: dict[str, Any] = {}
        for f in dataclasses.fields(a):
            mine, theirs = getattr(a, f.name), getattr(b, f.name)
            if f.name == "_lock":
                continue
            if isinstance(mine, Latencies):
                merged[f.name] = mine.merge(theirs)
            elif isinstance(mine, list):
                merged[f.name] = (mine + theirs)[:_MAX_SAMPLES]
            else:
                merged[f.name] = mine + theirs
        return type(a)(**merged)

    def __str__(self) -> str:
        s = self.snapshot()
        kinds = " ".join(f"{k}={getattr(s, k)}" for k in s.kinds)
        text = (
            f"connections={s.connections} exchanges={s.exchanges} "
            f"errors={s.errors_total()} ({kinds}) lost={s.lost} "
            f"closed_by_server={s.closed_by_server}"
        )
        if s.samples:
            text += "\n  " + "\n  ".join(s.samples)
        return text


@dataclasses.dataclass
class Stats(Counters):
    """
    The line-echo clients' counters; C{lost} counts lines sent but never echoed.
    """

    kinds: ClassVar[tuple[str, ...]] = ERROR_KINDS
    unit: ClassVar[str] = "lines"
    done_label: ClassVar[str] = "lines echoed"

    short_read: int = 0
    wrong_echo: int = 0


CountersT = TypeVar("CountersT", bound=Counters)


# --------------------------------------------------------------------------
# Load clients
# --------------------------------------------------------------------------


def classify(exc: BaseException) -> str:
    """The error kind of a socket exception."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "other"


def _exchange(sock: socket.socket, line: bytes, timeout: float) -> tuple[str, str]:
    """
    Send C{line} and read its echo, within C{timeout} seconds in all.

    @return: C{("", "")} on success, else C{(kind, detail)}.
    """
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        sock.settimeout(timeout)
        sock.sendall(line)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout", f"no full echo of {line!r} (got {buf!r})"
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
            if not chunk:
                return "short_read", f"EOF after {buf!r} for {line!r}"
            buf += chunk
    except Exception as e:  # noqa: BLE001 - every failure must be counted
        return classify(e), f"{e!r} after {buf!r} for {line!r}"
    if buf != line:
        return "wrong_echo", f"sent {line!r} got {buf!r}"
    return "", ""


class Clients(Generic[CountersT]):
    """
    Common thread management: C{n_threads} loops until L{stop}, counting into
    C{stats}.  A subclass implements C{_run(idx)}.
    """

    def __init__(
        self, host: str, port: int, n_threads: int, timeout: float, stats: CountersT
    ) -> None:
        self.host = host
        self.port = port
        self.n_threads = n_threads
        self.timeout = timeout
        self._stats = stats
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def stats(self) -> CountersT:
        """A point-in-time copy of the counters."""
        return self._stats.snapshot()

    def start(self) -> None:
        """Start the client threads."""
        for i in range(self.n_threads):
            t = threading.Thread(
                target=self._guarded_run,
                args=(i,),
                name=f"{type(self).__name__}-{i}",
                daemon=True,
            )
            self._threads.append(t)
            t.start()

    def stop(self) -> None:
        """Ask the threads to finish; in-flight exchanges still complete."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the threads; return False if some are still running."""
        if timeout is None:
            timeout = 2 * self.timeout + 2.0
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0.0))
        return not any(t.is_alive() for t in self._threads)

    def _connect(self) -> socket.socket | None:
        """Connect, counting the connection or the error; None on error."""
        started = time.monotonic()
        try:
            sock = socket.create_connection((self.host, self.port), self.timeout)
        except OSError as e:
            self._stats.error(classify(e), f"connect: {e!r}")
            return None
        self._stats.connected(time.monotonic() - started)
        return sock

    def _guarded_run(self, idx: int) -> None:
        try:
            self._run(idx)
        except Exception as e:  # noqa: BLE001 - surface as a counted error
            self._stats.error("other", f"client thread {idx} crashed: {e!r}")

    def _run(self, idx: int) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if not self.join() and exc_type is None:
            raise AssertionError(f"{type(self).__name__} threads did not stop")


class ShortClients(Clients[Stats]):
    """
    Threads doing connect / one echo / close in a tight loop.

    They exercise the listening socket: any moment without an accepting listener
    shows up as C{refused} (or C{reset} for a dropped backlog).
    """

    def __init__(
        self, host: str, port: int, n_threads: int, *, timeout: float = 5.0
    ) -> None:
        super().__init__(host, port, n_threads, timeout, Stats())

    def _run(self, idx: int) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            line = f"s{idx}-{seq}\n".encode()
            sock = self._connect()
            if sock is not None:
                with sock:
                    kind, detail = _exchange(sock, line, self.timeout)
                if not kind:
                    self._stats.add("exchanges")
                else:
                    self._stats.error(kind, detail, lost=kind != "wrong_echo")
            self._stop.wait(0.001)


class LongClients(Clients[Stats]):
    """
    Threads each holding one connection, doing lock-step echoes every C{interval}
    seconds.

    They exercise established connections across an upgrade.  A clean close by the
    server between exchanges is normal (reconnect, no error); a line that was sent
    but not echoed counts as C{lost}.  The EOF check before each send narrows, but
    cannot close, the window where the server closes just as a new line is on its
    way: a server must close I{with} a reply, as txflip's draining does.
    """

    def __init__(
        self,
        host: str,
        port: int,
        n_threads: int,
        interval: float = 0.005,
        *,
        timeout: float = 5.0,
    ) -> None:
        super().__init__(host, port, n_threads, timeout, Stats())
        self.interval = interval

    def _idle_check(self, sock: socket.socket) -> str:
        """ "" if C{sock} is still open and quiet, "eof", or an error kind."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return ""
            sock.settimeout(self.timeout)
            data = sock.recv(4096)
        except Exception as e:  # noqa: BLE001 - every failure must be counted
            kind = classify(e)
            self._stats.error(kind, f"idle connection: {e!r}")
            return kind
        if not data:
            return "eof"
        self._stats.error("wrong_echo", f"unsolicited data {data!r}")
        return "wrong_echo"

    def _run(self, idx: int) -> None:
        sock: socket.socket | None = None
        seq = 0
        try:
            while not self._stop.is_set():
                if sock is None:
                    sock = self._connect()
                    if sock is None:
                        self._stop.wait(0.001)
                        continue
                else:
                    state = self._idle_check(sock)
                    if state:
                        if state == "eof":
                            self._stats.add("closed_by_server")
                        sock.close()
                        sock = None
                        continue
                seq += 1
                line = f"l{idx}-{seq}\n".encode()
                kind, detail = _exchange(sock, line, self.timeout)
                if not kind:
                    self._stats.add("exchanges")
                    self._stop.wait(self.interval)
                else:
                    self._stats.error(kind, detail, lost=kind != "wrong_echo")
                    sock.close()
                    sock = None
                    self._stop.wait(0.001)
        finally:
            if sock is not None:
                sock.close()


class Load:
    """
    Short and long clients together, stopped and joined on exit.

    C{with Load(host, port, short=4, long=4) as load: ...}, then look at
    C{load.stats} (combined) or C{load.short_stats} / C{load.long_stats}.
    """

    def __init__(
        self,
        host: str,
        port: int,
        short: int = 4,
        long: int = 4,
        *,
        interval: float = 0.005,
        timeout: float = 5.0,
    ) -> None:
        self.short = ShortClients(host, port, short, timeout=timeout)
        self.long = LongClients(host, port, long, interval, timeout=timeout)

    @property
    def short_stats(self) -> Stats:
        """Copy of the short clients' counters."""
        return self.short.stats

    @property
    def long_stats(self) -> Stats:
        """Copy of the long clients' counters."""
        return self.long.stats

    @property
    def stats(self) -> Stats:
        """Combined copy of all counters."""
        return self.short_stats + self.long_stats

    def start(self) -> None:
        """Start all client threads."""
        self.short.start()
        self.long.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop and join all threads; return False if some did not finish."""
        self.short.stop()
        self.long.stop()
        ok_short = self.short.join(timeout)
        ok_long = self.long.join(timeout)
        return ok_short and ok_long

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.stop() and exc_type is None:
            raise AssertionError("load client threads did not stop")


# --------------------------------------------------------------------------
# Upgrades
# --------------------------------------------------------------------------


class CheckError(Exception):
    """
    Something the user can fix: reported as one line, exit status 2.
    """


class Server:
    """
    Where to find the serving pid: a pid file, or a pid and then its successors.

    Without a pid file a successor is recognised as a child of the old process that
    is still alive once the old one has gone (Linux C{/proc}); the moment it became
    ready is then unknown.
    """

    def __init__(self, pid_file: str | None = None, pid: int | None = None) -> None:
        self.pid_file = pid_file
        self._pid = pid

    def __str__(self) -> str:
        return f"pid file {self.pid_file}" if self.pid_file else f"pid {self._pid}"

    def current(self) -> int | None:
        """The pid that serves now, if known."""
        if self.pid_file is not None:
            return read_pidfile(self.pid_file)
        return self._pid

    def validate(self) -> int:
        """
        The serving pid, checked: it runs and we may signal it.

        @raise CheckError: with the reason.
        """
        if self.pid_file is not None:
            try:
                with open(self.pid_file, "rb") as f:
                    text = f.read(64)
            except OSError as e:
                raise CheckError(
                    f"cannot read pid file {self.pid_file}: {e.strerror}"
                ) from None
            pid = read_pidfile(self.pid_file)
            if pid is None:
                raise CheckError(
                    f"pid file {self.pid_file} does not hold a pid: {text[:20]!r}"
                )
        else:
            assert self._pid is not None
            pid = self._pid
        where = f" (from {self.pid_file})" if self.pid_file else ""
        if not pid_alive(pid):
            raise CheckError(f"no process with pid {pid}{where}")
        try:
            os.kill(pid, 0)
        except PermissionError:
            raise CheckError(f"not allowed to signal pid {pid}{where}") from None
        except ProcessLookupError:
            raise CheckError(f"no process with pid {pid}{where}") from None
        return pid

    def successor(self, old: int, children: set[int], old_gone: bool) -> int | None:
        """
        The new serving pid, once it can be told, else None.

        @param children: children of C{old} seen so far (used without a pid file).
        """
        if self.pid_file is not None:
            pid = read_pidfile(self.pid_file)
            if pid is not None and pid != old and pid_alive(pid):
                return pid
            return None
        if not old_gone:
            return None
        alive = sorted(pid for pid in children if pid_alive(pid))
        if alive:
            self._pid = alive[-1]
            return self._pid
        return None


@dataclasses.dataclass
class Upgrade:
    """
    One upgrade: C{SIGHUP} to C{old_pid} and what followed, in seconds from it.
    """

    number: int
    old_pid: int | None = None
    new_pid: int | None = None
    to_new: float | None = None
    to_old_gone: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def as_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "old_pid": self.old_pid,
            "new_pid": self.new_pid,
            "to_new_s": _round(self.to_new),
            "to_old_gone_s": _round(self.to_old_gone),
            "ok": self.ok,
            "error": self.error or None,
        }


def watch_upgrade(
    server: Server, number: int, old: int, started: float, timeout: float
) -> Upgrade:
    """
    After C{SIGHUP} to C{old} (sent at monotonic time C{started}), wait until the
    server names a new live pid and C{old} is gone, for at most C{timeout} seconds
    from C{started}.
    """
    result = Upgrade(number, old_pid=old)
    children: set[int] = set()
    deadline = started + timeout
    while True:
        now = time.monotonic()
        if result.to_old_gone is None:
            if server.pid_file is None:
                children |= children_of(old)
            if not pid_alive(old):
                result.to_old_gone = now - started
        if result.new_pid is None:
            pid = server.successor(old, children, result.to_old_gone is not None)
            if pid is not None:
                result.new_pid = pid
                if server.pid_file is not None:
                    result.to_new = now - started
        if result.new_pid is not None and result.to_old_gone is not None:
            return result
        if now >= deadline:
            break
        time.sleep(min(_POLL, max(deadline - now, 0.0)))
    if result.new_pid is None and result.to_old_gone is None:
        result.error = (
            f"no new pid and pid {old} still running {timeout:g} s after SIGHUP"
        )
    elif result.new_pid is None:
        if server.pid_file is None:
            result.error = (
                f"pid {old} exited, but no successor was found among its children"
                " (use --pid-file)"
            )
        else:
            result.error = (
                f"pid {old} exited, but {server.pid_file} named no new live pid"
                f" within {timeout:g} s"
            )
    else:
        result.error = (
            f"new pid {result.new_pid} serves, but old pid {old} was still running"
            f" {timeout:g} s after SIGHUP"
        )
    return result


def upgrade(server: Server, number: int, timeout: float) -> Upgrade:
    """
    Send C{SIGHUP} to the serving pid and watch the upgrade (at most C{timeout}).
    """
    old = server.current()
    if old is None or not pid_alive(old):
        what = "no pid" if old is None else f"pid {old}, which is not running"
        return Upgrade(number, old_pid=old, error=f"{server} names {what}")
    started = time.monotonic()
    try:
        os.kill(old, signal.SIGHUP)
    except OSError as e:
        return Upgrade(number, old_pid=old, error=f"cannot signal pid {old}: {e}")
    return watch_upgrade(server, number, old, started, timeout)


# --------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------


def _round(seconds: float | None, digits: int = 4) -> float | None:
    return None if seconds is None else round(seconds, digits)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 10:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s"


def _p50_max(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "max": None}
    ordered = sorted(values)
    return {"p50": ordered[(len(ordered) - 1) // 2], "max": ordered[-1]}


@dataclasses.dataclass
class Report:
    """
    What a check saw; L{table} and L{as_json} show it, L{status} judges it.

    C{groups} holds each kind of client's counters by name (echo: C{short} and
    C{long}), C{clients} how many clients of each kind ran.
    """

    target: str
    seconds: float
    clients: dict[str, int]
    groups: dict[str, Counters]
    upgrades_planned: int
    upgrades: list[Upgrade]
    max_errors: int
    stuck_threads: bool = False

    @property
    def total(self) -> Counters:
        return functools.reduce(operator.add, self.groups.values())

    def upgrade_failures(self) -> list[str]:
        failures = [f"upgrade {u.number}: {u.error}" for u in self.upgrades if u.error]
        for number in range(len(self.upgrades) + 1, self.upgrades_planned + 1):
            failures.append(f"upgrade {number}: not started (the run ended first)")
        return failures

    def status(self) -> int:
        if self.total.errors_total() > self.max_errors or self.upgrade_failures():
            return FAILED
        return OK

    def verdict(self) -> str:
        total = self.total
        done = sum(u.ok for u in self.upgrades)
        word = "OK" if self.status() == OK else "FAILED"
        return (
            f"{word}: {total.errors_total()} errors (max {self.max_errors}),"
            f" {total.lost} lost {total.unit},"
            f" {done}/{self.upgrades_planned} upgrades completed"
        )

    def _latencies(self) -> dict[str, dict[str, float | None]]:
        ok = [u for u in self.upgrades if u.ok]
        return {
            "sighup_to_new_pid": _p50_max(
                [u.to_new for u in ok if u.to_new is not None]
            ),
            "sighup_to_old_gone": _p50_max(
                [u.to_old_gone for u in ok if u.to_old_gone is not None]
            ),
        }

    def as_json(self) -> dict[str, Any]:
        def group(stats: Counters) -> dict[str, Any]:
            shown: dict[str, Any] = {
                "connections": stats.connections,
                stats.unit: stats.exchanges,
                "errors": stats.errors_total(),
                "errors_by_kind": {k: getattr(stats, k) for k in stats.kinds},
                f"lost_{stats.unit}": stats.lost,
                "closed_by_server": stats.closed_by_server,
            }
            for name, latency in stats.latencies().items():
                shown[f"{name}_latency_s"] = {
                    "p50": _round(latency.quantile(0.5), 6),
                    "p99": _round(latency.quantile(0.99), 6),
                    "max": _round(latency.max if latency.count else None, 6),
                }
            shown["samples"] = stats.samples
            return shown

        total = self.total
        seconds = max(self.seconds, 1e-9)
        return {
            "target": self.target,
            "seconds": round(self.seconds, 3),
            **{f"{name}_clients": n for name, n in self.clients.items()},
            **{name: group(stats) for name, stats in self.groups.items()},
            "total": group(total),
            "throughput": {
                "connections_per_s": round(total.connections / seconds, 1),
                f"{total.unit}_per_s": round(total.exchanges / seconds, 1),
            },
            "upgrades_planned": self.upgrades_planned,
            "upgrades_completed": sum(u.ok for u in self.upgrades),
            "upgrades": [u.as_json() for u in self.upgrades],
            "upgrade_latency_s": {
                name: {k: _round(v) for k, v in values.items()}
                for name, values in self._latencies().items()
            },
            "failures": self.upgrade_failures(),
            "stuck_threads": self.stuck_threads,
            "max_errors": self.max_errors,
            "ok": self.status() == OK,
        }

    def table(self) -> str:
        total = self.total
        columns = [*self.groups.values(), total]
        kinds = " + ".join(f"{n} {name}" for name, n in self.clients.items())
        lines = [
            f"txflip check: {self.target} for {self.seconds:.1f} s, {kinds} clients,"
            f" {self.upgrades_planned} upgrades",
            "",
            f"{'':<22}" + "".join(f"{name:>10}" for name in [*self.groups, "total"]),
        ]

        def row(label: str, name: str) -> None:
            values = [
                s.errors_total() if name == "errors" else getattr(s, name)
                for s in columns
            ]
            lines.append(f"{label:<22}" + "".join(f"{v:>10}" for v in values))

        row("connections", "connections")
        row(total.done_label, "exchanges")
        row("errors", "errors")
        for kind in total.kinds:
            row(f"  {kind.replace('_', ' ')}", kind)
        row(f"lost {total.unit}", "lost")
        row("closed by server", "closed_by_server")
        seconds = max(self.seconds, 1e-9)
        lines.append("")
        for name, latency in total.latencies().items():
            lines.append(
                f"{name + ' latency':<22}p50 {_ms(latency.quantile(0.5))}"
                f"   p99 {_ms(latency.quantile(0.99))}"
                f"   max {_ms(latency.max if latency.count else None)}"
            )
        lines.append(
            f"{'throughput':<22}{total.connections / seconds:.0f} connections/s"
            f"   {total.exchanges / seconds:.0f} {total.unit}/s"
        )
        if self.upgrades_planned:
            lines += [
                "",
                f"{'upgrade':<10}{'old pid':>9}{'new pid':>9}"
                f"{'SIGHUP→new pid':>17}{'SIGHUP→old gone':>18}",
            ]
            for u in self.upgrades:
                lines.append(
                    f"{u.number:<10}{u.old_pid or '-'!s:>9}{u.new_pid or '-'!s:>9}"
                    f"{_ms(u.to_new):>17}{_ms(u.to_old_gone):>18}"
                )
            latencies = self._latencies()
            for stat in ("p50", "max"):
                lines.append(
                    f"{stat:<28}"
                    f"{_ms(latencies['sighup_to_new_pid'][stat]):>17}"
                    f"{_ms(latencies['sighup_to_old_gone'][stat]):>18}"
                )
        problems = self.upgrade_failures()
        if self.stuck_threads:
            problems.append("some client threads did not stop in time")
        samples = total.samples[:5]
        if problems or samples:
            lines.append("")
        lines += problems
        if samples:
            lines.append("first errors:")
            lines += [f"  {sample}" for sample in samples]
        lines += ["", self.verdict()]
        return "\n".join(lines)


def _probe(host: str, port: int, timeout: float) -> None:
    """
    One echo, before any load: is something there, and does it echo lines?

    @raise CheckError: with the reason.
    """
    with connect_or_fail(host, port, timeout) as sock:
        kind, detail = _exchange(sock, _PROBE, timeout)
    if kind:
        raise CheckError(f"{host}:{port} does not echo lines ({kind}: {detail})")


def connect_or_fail(host: str, port: int, timeout: float) -> socket.socket:
    """
    A connection for a probe.

    @raise CheckError: why there is none.
    """
    where = f"{host}:{port}"
    try:
        return socket.create_connection((host, port), timeout)
    except ConnectionRefusedError:
        raise CheckError(f"cannot connect to {where}: connection refused") from None
    except TimeoutError:
        raise CheckError(f"cannot connect to {where}: timed out") from None
    except OSError as e:
        raise CheckError(f"cannot connect to {where}: {e.strerror or e}") from None


class _Progress:
    """
    The live progress line, on a terminal only.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.enabled = stream.isatty()

    def show(
        self, elapsed: float, duration: float, stats: Counters, upgrades: int
    ) -> None:
        if not self.enabled:
            return
        self._stream.write(
            f"\r{elapsed:5.1f}/{duration:.0f} s  connections {stats.connections}"
            f"  {stats.unit} {stats.exchanges}  errors {stats.errors_total()}"
            f"  lost {stats.lost}  upgrades {upgrades}\x1b[K"
        )
        self._stream.flush()

    def clear(self) -> None:
        if self.enabled:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def upgrade_times(duration: float, n: int) -> list[float]:
    """When (seconds into the run) the C{n} upgrades are due: evenly spaced."""
    return [duration * (i + 1) / (n + 1) for i in range(n)]


class Loader(Protocol):
    """
    What L{run_load} drives: client threads that count into C{stats}.
    """

    @property
    def stats(self) -> Counters: ...

    def start(self) -> None: ...

    def stop(self) -> bool: ...


@dataclasses.dataclass
class Run:
    """
    What L{run_load} saw: how long the load ran, the upgrades, and whether every
    client thread stopped.
    """

    seconds: float
    upgrades: list[Upgrade]
    stopped: bool


def run_load(
    load: Loader,
    *,
    upgrade_one: Callable[[int], Upgrade] | None,
    duration: float,
    upgrades: int,
    progress: IO[str] | None = None,
) -> Run:
    """
    Run C{load} for C{duration} seconds with C{upgrades} upgrades spaced over it,
    each done by C{upgrade_one(number)}.

    An upgrade due while the previous one still runs waits for it; one that cannot
    start before the end of the run is reported as not started.  An upgrade in
    progress at the end keeps the load running until it completes or times out.
    """
    assert upgrade_one is not None or upgrades == 0
    shown = _Progress(progress) if progress is not None else None
    done: list[Upgrade] = []
    start = time.monotonic()
    end = start + duration

    def upgrader() -> None:
        for number, due in enumerate(upgrade_times(duration, upgrades), 1):
            now = time.monotonic()
            if now >= end or upgrade_one is None:
                return
            time.sleep(max(start + due - now, 0.0))
            done.append(upgrade_one(number))

    thread = threading.Thread(target=upgrader, name="txflip-check-upgrades")
    thread.daemon = True
    load.start()
    try:
        thread.start()
        while True:
            now = time.monotonic()
            if now >= end and not thread.is_alive():
                break
            if shown is not None:
                shown.show(now - start, duration, load.stats, len(done))
            wait = 0.25 if now >= end else max(min(0.25, end - now), 0.01)
            if thread.is_alive():
                thread.join(wait)
            else:  # join() would return at once: no busy loop stealing the GIL
                time.sleep(wait)
    finally:
        seconds = time.monotonic() - start
        stopped = load.stop()
        if shown is not None:
            shown.clear()
    return Run(seconds, list(done), stopped)


def run_check(
    host: str,
    port: int,
    *,
    upgrade_one: Callable[[int], Upgrade] | None,
    short_clients: int,
    long_clients: int,
    duration: float,
    upgrades: int,
    interval: float,
    io_timeout: float,
    max_errors: int,
    progress: IO[str] | None = None,
) -> Report:
    """
    The line-echo check: L{Load} through L{run_load}, upgrading the service with
    C{upgrade_one(number)}.
    """
    load = Load(
        host, port, short_clients, long_clients, interval=interval, timeout=io_timeout
    )
    run = run_load(
        load,
        upgrade_one=upgrade_one,
        duration=duration,
        upgrades=upgrades,
        progress=progress,
    )
    return Report(
        f"{host}:{port}",
        run.seconds,
        {"short": short_clients, "long": long_clients},
        {"short": load.short_stats, "long": load.long_stats},
        upgrades,
        run.upgrades,
        max_errors,
        stuck_threads=not run.stopped,
    )


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


_count = argNumber(int, 0, "expected a whole number >= 0")
_positive_int = argNumber(int, 1, "expected a whole number >= 1")


def _port(text: str) -> int:
    port: int = _positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1-65535, not {text!r}")
    return port


def register(subparsers: Any) -> None:
    """
    Add the C{check} subcommand.
    """
    parser = subparsers.add_parser(
        "check",
        help="prove that a running server upgrades without errors under load",
        description=(
            "Load a line-echo server (--port) or an HTTP server (--http URL) with"
            " short- and long-lived clients, upgrade it with SIGHUP or through its"
            " control socket, and report every error, lost line or request and"
            " upgrade latency."
            " Exit status 1 when errors exceed --max-errors or an upgrade did not"
            " complete, 2 when the target is unusable."
        ),
    )
    target = parser.add_argument_group("target")
    target.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    where = target.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=_port, help="a line-echo server's port")
    where.add_argument(
        "--http", metavar="URL", help="an HTTP server: GET (or POST) this http:// URL"
    )
    pid = target.add_mutually_exclusive_group()
    pid.add_argument(
        "--pid-file",
        metavar="PATH",
        help="the server's pid file (it must name each new generation)",
    )
    pid.add_argument(
        "--pid",
        type=_positive_int,
        metavar="N",
        help="the server's pid; successors are found as its children (Linux)",
    )
    pid.add_argument(
        "--control",
        metavar="PATH",
        help="the service's control socket: upgrades say why they failed",
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "--short-clients",
        type=_count,
        default=4,
        metavar="K",
        help="clients doing connect, one line, close, repeat (default: 4)",
    )
    load.add_argument(
        "--long-clients",
        type=_count,
        default=4,
        metavar="M",
        help="clients holding a connection, a line (HTTP: a request) every"
        " --interval (default: 4)",
    )
    load.add_argument(
        "--post-bytes",
        type=_count,
        default=0,
        metavar="N",
        help="HTTP: also POST N-byte bodies, sent in 4 pieces --interval apart",
    )
    load.add_argument(
        "--upload-clients",
        type=_count,
        metavar="K",
        help="HTTP: clients sending --post-bytes bodies (default: 2 with --post-bytes)",
    )
    load.add_argument(
        "--expect-status",
        metavar="LIST",
        help="HTTP: statuses that count as right, like 200,204 or 2xx"
        " (default: 2xx,3xx)",
    )
    load.add_argument(
        "--duration",
        type=argSeconds,
        default=10.0,
        metavar="SECONDS",
        help="default: 10",
    )
    load.add_argument(
        "--interval",
        type=argSeconds,
        default=0.005,
        metavar="SECONDS",
        help="long clients' pause between lines (default: 0.005)",
    )
    load.add_argument(
        "--io-timeout",
        type=argSeconds,
        default=5.0,
        metavar="SECONDS",
        help="bound on each connect and each echo (default: 5)",
    )
    upgrades = parser.add_argument_group("upgrades")
    upgrades.add_argument(
        "--upgrades",
        type=_count,
        default=3,
        metavar="N",
        help="SIGHUPs, evenly spaced over the run (default: 3)",
    )
    upgrades.add_argument(
        "--upgrade-timeout",
        type=argSeconds,
        default=30.0,
        metavar="SECONDS",
        help="how long an upgrade may take, SIGHUP to old pid gone (default: 30)",
    )
    output = parser.add_argument_group("result")
    output.add_argument(
        "--max-errors",
        type=_count,
        default=0,
        metavar="N",
        help="errors tolerated before exit status 1 (default: 0)",
    )
    output.add_argument("--json", action="store_true", help="print JSON, not a table")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """
    Run C{txflip check}; the exit status.
    """
    # Imported here: the HTTP check and the control socket build on this module.
    from ._httpcheck import runHTTP

    try:
        return runHTTP(args) if args.http is not None else _main(args)
    except CheckError as e:
        print(f"txflip check: {e}", file=sys.stderr)
        return BAD_INPUT


def _main(args: argparse.Namespace) -> int:
    if args.short_clients + args.long_clients == 0:
        raise CheckError("nothing to do: --short-clients and --long-clients are 0")
    if args.short_clients + args.long_clients > 1000:
        raise CheckError("at most 1000 clients in all")
    for option in ("post_bytes", "upload_clients", "expect_status"):
        if getattr(args, option):
            raise CheckError(f"--{option.replace('_', '-')} needs --http")
    upgrade_one = upgrader(args)
    _probe(args.host, args.port, args.io_timeout)
    report = run_check(
        args.host,
        args.port,
        upgrade_one=upgrade_one,
        short_clients=args.short_clients,
        long_clients=args.long_clients,
        duration=args.duration,
        upgrades=args.upgrades,
        interval=args.interval,
        io_timeout=args.io_timeout,
        max_errors=args.max_errors,
        progress=sys.stderr,
    )
    return show(report, args.json)


def show(report: Report, as_json: bool) -> int:
    """Print C{report}, as a table or JSON; the exit status."""
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(report.table())
    return report.status()


def upgrader(args: argparse.Namespace) -> Callable[[int], Upgrade] | None:
    """
    How to upgrade the service: through its control socket, or with C{SIGHUP}
    to the pid that C{--pid-file} or C{--pid} names; checked now.

    @raise CheckError: with the reason.
    """
    from ._checkcontrol import controlUpgrade, servingPid  # builds on this module

    if args.control is not None:
        servingPid(args.control, args.io_timeout)
        return functools.partial(
            controlUpgrade, args.control, timeout=args.upgrade_timeout
        )
    if args.pid_file is not None or args.pid is not None:
        server = Server(args.pid_file, args.pid)
        server.validate()
        return functools.partial(upgrade, server, timeout=args.upgrade_timeout)
    if args.upgrades:
        raise CheckError(
            "upgrades need the server's pid: give --pid-file, --pid or --control"
        )
    return None
