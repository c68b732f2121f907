"""Stdlib-only helpers for end-to-end tests against real server processes.

Nothing here uses Twisted on purpose: the harness must observe the server
from the outside, exactly like a real client would, so that a bug in the
reactor or in txflip cannot also hide itself from the measurement.

Every blocking call is bounded by a timeout, so a hung server turns into a
failed assertion instead of a hung test run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "ERROR_KINDS",
    "Load",
    "LongClients",
    "ServerProcess",
    "ShortClients",
    "Stats",
    "can_connect",
    "free_port",
    "pid_alive",
    "read_pidfile",
    "wait_for",
    "wait_for_upgrade",
]

T = TypeVar("T")

#: Error kinds counted by :class:`Stats`; ``other`` catches the unexpected so
#: a client thread never dies silently.
ERROR_KINDS = ("refused", "reset", "timeout", "short_read", "wrong_echo", "other")

_KILL_WAIT = 5.0  # seconds to wait for SIGKILLed processes to disappear
_MAX_SAMPLES = 20  # error descriptions kept per Stats for diagnostics


# --------------------------------------------------------------------------
# Polling and processes
# --------------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it is truthy and return its value.

    Tests wait on observable state, never on guessed sleeps; the deadline
    turns a stuck condition into a readable AssertionError.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(min(interval, remaining))


def read_pidfile(path: str | os.PathLike[str]) -> int | None:
    """Return the pid in ``path``, or None if missing, empty or garbage.

    Pidfiles are polled while they are being replaced, so every failure
    mode simply means "no pid yet".
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


def pid_alive(pid: int) -> bool:
    """Return True if ``pid`` runs; zombies count as dead.

    An exited server that nobody reaped yet is a zombie, and for an upgrade
    test "exited" is what matters.
    """
    if pid <= 0:  # os.kill(0 or negative) would signal whole process groups
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return False
    except OSError:
        pass
    else:
        # "pid (comm) S ...": comm may contain ')' so split at the last one.
        fields = stat[stat.rfind(b")") + 1 :].split()
        return bool(fields) and fields[0] not in (b"Z", b"X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_upgrade(
    pidfile: str | os.PathLike[str], old_pid: int, timeout: float
) -> tuple[int, float, float]:
    """Wait for a new live pid in ``pidfile``, then for ``old_pid`` to go.

    Returns ``(new_pid, seconds_to_new_pid, seconds_to_old_gone)``, both
    durations measured from the call, so tests can bound the hand-over time.
    ``timeout`` bounds the whole wait.
    """
    start = time.monotonic()
    deadline = start + timeout

    def new_pid() -> int | None:
        pid = read_pidfile(pidfile)
        if pid is not None and pid != old_pid and pid_alive(pid):
            return pid
        return None

    pid = wait_for(new_pid, timeout, what=f"a new live pid in {os.fspath(pidfile)}")
    assert pid is not None  # wait_for only returns truthy values
    t_new = time.monotonic() - start
    wait_for(
        lambda: not pid_alive(old_pid),
        max(deadline - time.monotonic(), 0.0),
        what=f"old pid {old_pid} to exit (new pid {pid})",
    )
    return pid, t_new, time.monotonic() - start


def free_port() -> int:
    """Return a currently unused TCP port on 127.0.0.1.

    For tests that must name a port up front (e.g. in a server's argv);
    another process could grab it in between, which is acceptable here.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def can_connect(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True if a TCP connect succeeds; for waiting until a server listens."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ServerProcess:
    """A server subprocess whose output goes to a log file.

    It runs in its own session so Ctrl-C or signals aimed at the test runner
    do not reach it. On exit it SIGKILLs what it started plus every pid
    registered with :meth:`track` (later server generations are spawned by
    the server, not by us), so a failed test leaves no stray listeners.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        log_path: str | os.PathLike[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.log_path = os.fspath(log_path)
        self._tracked: set[int] = set()
        # Unbuffered output so log_text() sees messages as they happen;
        # callers can override it through ``env``.
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()
            self._popen = subprocess.Popen(
                [os.fspath(a) for a in argv],
                cwd=cwd,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The pid of the process we started (the first generation)."""
        return self._popen.pid

    def poll(self) -> int | None:
        """Return the exit code if the process has exited, else None."""
        return self._popen.poll()

    def send(self, sig: int) -> None:
        """Send ``sig`` to the started process (no-op once it was reaped)."""
        self._popen.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the started process to exit and return its returncode.

        Raises AssertionError with the log tail on timeout, because the log
        is what explains a server that refuses to stop.
        """
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            tail = self.log_text()[-3000:]
            raise AssertionError(
                f"pid {self.pid} did not exit within {timeout}s; log tail:\n{tail}"
            ) from None

    def log_text(self) -> str:
        """Return what was appended to the log since this process started."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def track(self, pid: int) -> None:
        """Register a descendant pid to be killed on exit if still alive."""
        if pid > 0:
            self._tracked.add(pid)

    def close(self) -> None:
        """SIGKILL everything we started or tracked and wait (bounded) for it."""
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.kill()
        # Untracked descendants still in the session's process group.  The
        # group id cannot be reused while any member is alive.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)
        for pid in sorted(self._tracked):
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(_KILL_WAIT)
        with contextlib.suppress(AssertionError):
            wait_for(
                lambda: not any(pid_alive(p) for p in self._tracked),
                _KILL_WAIT,
                what="tracked pids to die",
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------
# Load clients
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Stats:
    """Thread-safe counters for a group of load clients.

    Every ``lost`` message is also counted under the error kind that lost
    it, so :meth:`errors_total` does not add ``lost`` in again.
    ``closed_by_server`` counts clean closes between exchanges (not errors).
    """

    connections: int = 0
    exchanges: int = 0
    refused: int = 0
    reset: int = 0
    timeout: int = 0
    short_read: int = 0
    wrong_echo: int = 0
    other: int = 0
    lost: int = 0
    closed_by_server: int = 0
    samples: list[str] = dataclasses.field(default_factory=list)
    _lock: threading.Lock = dataclasses.field(
        default_factory=threading.Lock, repr=False, compare=False
    )

    def add(self, name: str, n: int = 1) -> None:
        """Increment counter ``name`` by ``n`` atomically."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def error(self, kind: str, detail: str, *, lost: bool = False) -> None:
        """Count one error of ``kind`` (and a lost message if ``lost``)."""
        assert kind in ERROR_KINDS, kind
        with self._lock:
            setattr(self, kind, getattr(self, kind) + 1)
            if lost:
                self.lost += 1
            if len(self.samples) < _MAX_SAMPLES:
                self.samples.append(f"{kind}: {detail}")

    def errors_total(self) -> int:
        """Number of errors of all kinds."""
        with self._lock:
            return sum(getattr(self, k) for k in ERROR_KINDS)

    def snapshot(self) -> Stats:
        """Return a consistent copy that no longer changes."""
        with self._lock:
            return dataclasses.replace(self, samples=list(self.samples))

    def __add__(self, other: Stats) -> Stats:
        a, b = self.snapshot(), other.snapshot()
        merged = {
            f.name: getattr(a, f.name) + getattr(b, f.name)
            for f in dataclasses.fields(Stats)
            if f.name not in ("samples", "_lock")
        }
        return Stats(**merged, samples=(a.samples + b.samples)[:_MAX_SAMPLES])

    def __str__(self) -> str:
        s = self.snapshot()
        kinds = " ".join(f"{k}={getattr(s, k)}" for k in ERROR_KINDS)
        text = (
            f"connections={s.connections} exchanges={s.exchanges} "
            f"errors={s.errors_total()} ({kinds}) lost={s.lost} "
            f"closed_by_server={s.closed_by_server}"
        )
        if s.samples:
            text += "\n  " + "\n  ".join(s.samples)
        return text


def _classify(exc: BaseException) -> str:
    """Map a socket exception to an error kind."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "other"


def _exchange(sock: socket.socket, line: bytes, timeout: float) -> tuple[str, str]:
    """Send ``line`` and read its echo.

    Returns ``("", "")`` on success, else ``(kind, detail)``.  The whole
    exchange is bounded by ``timeout``.
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
        return _classify(e), f"{e!r} after {buf!r} for {line!r}"
    if buf != line:
        return "wrong_echo", f"sent {line!r} got {buf!r}"
    return "", ""


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


class _Clients:
    """Common thread management: ``n_threads`` loops until :meth:`stop`."""

    _prefix = "c"

    def __init__(self, host: str, port: int, n_threads: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self.n_threads = n_threads
        self.timeout = timeout
        self._stats = Stats()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def stats(self) -> Stats:
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


class ShortClients(_Clients):
    """Threads doing connect / one echo / close in a tight loop.

    Exercises the listening socket: any moment without an accepting
    listener shows up as ``refused`` (or ``reset`` for a dropped backlog).
    """

    def __init__(
        self, host: str, port: int, n_threads: int, *, timeout: float = 5.0
    ) -> None:
        super().__init__(host, port, n_threads, timeout)

    def _run(self, idx: int) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            line = f"s{idx}-{seq}\n".encode()
            try:
                sock = _connect(self.host, self.port, self.timeout)
            except OSError as e:
                self._stats.error(_classify(e), f"connect: {e!r}")
            else:
                self._stats.add("connections")
                with sock:
                    kind, detail = _exchange(sock, line, self.timeout)
                if not kind:
                    self._stats.add("exchanges")
                else:
                    self._stats.error(kind, detail, lost=kind != "wrong_echo")
            self._stop.wait(0.001)


class LongClients(_Clients):
    """Threads each holding one connection, doing lock-step echoes.

    Exercises established connections across an upgrade.  A clean close by
    the server between exchanges is normal (reconnect, no error); losing a
    line that was sent but not echoed is counted as ``lost``.  The EOF check
    before each send narrows, but cannot fully close, the window where the
    server closes just as a new line is on its way.
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
        super().__init__(host, port, n_threads, timeout)
        self.interval = interval

    def _idle_check(self, sock: socket.socket) -> str:
        """Return "" if ``sock`` is still open and quiet, "eof", or an error kind."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return ""
            sock.settimeout(self.timeout)
            data = sock.recv(4096)
        except Exception as e:  # noqa: BLE001 - every failure must be counted
            kind = _classify(e)
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
                    try:
                        sock = _connect(self.host, self.port, self.timeout)
                    except OSError as e:
                        self._stats.error(_classify(e), f"connect: {e!r}")
                        self._stop.wait(0.001)
                        continue
                    self._stats.add("connections")
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
    """Short and long clients together, stopped and joined on exit.

    ``with Load(host, port, short=4, long=4) as load: ...`` then assert on
    ``load.stats`` (combined) or ``load.short_stats`` / ``load.long_stats``.
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
