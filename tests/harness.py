"""Helpers for end-to-end tests against real server processes.

The load clients (:class:`Load`, :class:`ShortClients`, :class:`LongClients`,
:class:`Stats`) and the pid helpers are those of ``txflip check``
(``txflip/check/_echoload.py``, ``txflip/check/_pid.py``, ``txflip/generation/_pidfile.py``),
re-exported here.  They are plain threads and
sockets, not Twisted, on purpose: the harness must observe the server from
the outside, exactly like a real client would, so that a bug in the reactor
or in txflip cannot also hide itself from the measurement.

Every blocking call is bounded by a timeout, so a hung server turns into a
failed assertion instead of a hung test run.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from txflip.check._echoload import Load, LongClients, ShortClients
from txflip.check._pid import Server, watchUpgrade
from txflip.check._stats import ERROR_KINDS, Stats
from txflip.generation._pidfile import PidFile, pidAlive

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "ERROR_KINDS",
    "Load",
    "LongClients",
    "ServerProcess",
    "ShortClients",
    "Stats",
    "allGone",
    "becomeSubreaper",
    "canConnect",
    "found",
    "freePort",
    "isOpen",
    "killedAtEnd",
    "moreThan",
    "oneLine",
    "pidAlive",
    "readPidFile",
    "reap",
    "sessionProcesses",
    "startLogged",
    "txflipCheck",
    "waitFor",
    "waitForUpgrade",
]

T = TypeVar("T")


def readPidFile(path: str | os.PathLike[str]) -> int | None:
    """
    The pid the file at C{path} names, if any (the service's own reader).
    """
    return PidFile(os.fspath(path)).read()


PR_SET_CHILD_SUBREAPER = 36
_KILL_WAIT = 5.0  # seconds to wait for SIGKILLed processes to disappear
_ROOT = Path(__file__).resolve().parent.parent


def txflipCheck(*args: str, timeout: float = 60) -> tuple[int, dict[str, Any], str]:
    """
    Run C{python -m txflip check ... --json}; its status, JSON report and stderr.
    """
    done = subprocess.run(
        [sys.executable, "-m", "txflip", "check", *args, "--json"],
        env={**os.environ, "PYTHONPATH": str(_ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


# --------------------------------------------------------------------------
# Polling and processes
# --------------------------------------------------------------------------


def waitFor(
    predicate: Callable[[], T | None],
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


def found(pattern: str, text: str) -> str:
    """
    The first group of C{pattern}'s first match in C{text}; fails if none.
    """
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in {text[-2000:]!r}"
    return match.group(1)


def waitForUpgrade(
    pidfile: str | os.PathLike[str], oldPid: int, timeout: float
) -> tuple[int, float, float]:
    """Wait for a new live pid in ``pidfile`` and for ``oldPid`` to go.

    Returns ``(newPid, secondsToNewPid, secondsToOldGone)``, both
    durations measured from the call, so tests can bound the hand-over time.
    ``timeout`` bounds the whole wait.  ``txflip check`` waits the same way.
    """
    server = Server(pidFile=os.fspath(pidfile))
    result = watchUpgrade(server, 0, oldPid, time.monotonic(), timeout)
    if result.error:
        raise AssertionError(f"timed out after {timeout}s: {result.error}")
    assert result.newPid is not None
    assert result.toNew is not None and result.toOldGone is not None
    return result.newPid, result.toNew, result.toOldGone


def oneLine(message: str, prefix: str, *fragments: str) -> str:
    """
    Assert that C{message} (an error's) is one line, starts with C{prefix} and
    contains every fragment; return it.
    """
    assert len(message.splitlines()) == 1, message
    assert message.startswith(prefix), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def becomeSubreaper() -> bool:
    """
    Become the parent of every orphaned descendant (Linux): the exit status of
    each generation of a server comes to us (L{reap}), and no zombie is left.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def reap(pid: int, timeout: float) -> int | None:
    """
    Wait for C{pid} (one of our children, thanks to the subreaper) to exit; return
    its exit status as C{subprocess} does (negative for a signal), or None if it is
    not our child.
    """
    result: list[int | None] = []

    def exited() -> bool:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            result.append(None)
            return True
        if got == pid:
            result.append(os.waitstatus_to_exitcode(status))
            return True
        return False

    waitFor(exited, timeout, what=f"pid {pid} to exit")
    return result[0]


def isOpen(fd: int) -> bool:
    """
    Whether C{fd} is open in this process (only C{EBADF} means it is not).
    """
    try:
        os.fstat(fd)
    except OSError as e:
        assert e.errno == errno.EBADF
        return False
    return True


def moreThan(count: Callable[[], int], n: int) -> Callable[[], bool]:
    """
    For L{waitFor}: whether C{count()} has gone past C{n}.
    """
    return lambda: count() > n


def allGone(*pids: int) -> Callable[[], bool]:
    """
    For L{waitFor}: whether none of C{pids} is alive any more.
    """
    return lambda: not any(pidAlive(pid) for pid in pids)


def sessionProcesses(sid: int) -> list[tuple[int, str]]:
    """
    (pid, state) of every process in session C{sid}, zombies included (Linux
    C{/proc}): a service's generations all descend from its first process.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            found.append((int(name), fields[0].decode()))
    return sorted(found)


def freePort() -> int:
    """Return a currently unused TCP port on 127.0.0.1.

    For tests that must name a port up front (e.g. in a server's argv);
    another process could grab it in between, which is acceptable here.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def canConnect(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True if a TCP connect succeeds; for waiting until a server listens."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def killedAtEnd(*processes: subprocess.Popen[Any]) -> Iterator[None]:
    """
    However the block ends, every one of C{processes} still running is killed,
    and each is reaped (by its pid: the test's own children only).
    """
    try:
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(_KILL_WAIT)


def startLogged(
    argv: Sequence[str | os.PathLike[str]],
    logPath: str | os.PathLike[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    errors: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """
    Start C{argv} in a session of its own (signals aimed at the runner do not reach
    it, and the session finds every process it starts), reading nothing, with its
    output appended to C{logPath}.  The tests' servers and the benchmarks' alike.

    @param errors: where its stderr is appended instead, for a test of what it
        says there apart from its log.
    """
    with contextlib.ExitStack() as files:
        log = files.enter_context(open(logPath, "ab"))
        stderr = log if errors is None else files.enter_context(open(errors, "ab"))
        return subprocess.Popen(
            [os.fspath(a) for a in argv],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=stderr,
            start_new_session=True,
        )


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
        logPath: str | os.PathLike[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        errors: str | os.PathLike[str] | None = None,
    ) -> None:
        """
        @param errors: where its stderr goes instead of the log (L{startLogged}).
        """
        self.logPath = os.fspath(logPath)
        self._tracked: set[int] = set()
        self._logStart = (
            os.path.getsize(self.logPath) if os.path.exists(self.logPath) else 0
        )
        # Unbuffered output so logText() sees messages as they happen;
        # callers can override it through ``env``.
        fullEnv = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._popen = startLogged(
            argv, self.logPath, cwd=cwd, env=fullEnv, errors=errors
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

    def waitExit(self, timeout: float) -> int:
        """Wait for the started process to exit and return its returncode.

        Raises AssertionError with the log tail on timeout, because the log
        is what explains a server that refuses to stop.
        """
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            tail = self.logText()[-3000:]
            raise AssertionError(
                f"pid {self.pid} did not exit within {timeout}s; log tail:\n{tail}"
            ) from None

    def logText(self) -> str:
        """Return what was appended to the log since this process started."""
        try:
            with open(self.logPath, "rb") as f:
                f.seek(self._logStart)
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
            if pidAlive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(_KILL_WAIT)
        with contextlib.suppress(AssertionError):
            waitFor(
                lambda: not any(pidAlive(p) for p in self._tracked),
                _KILL_WAIT,
                what="tracked pids to die",
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
