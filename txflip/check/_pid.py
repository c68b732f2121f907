"""
Following the serving pid of C{txflip check}'s target across upgrades: send
C{SIGHUP} to the pid that serves, and wait until a new live pid serves (named by the
pid file, or found among the old process's children) and the old one is gone.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time

from txflip._errors import CheckError
from txflip.generation._pidfile import PidFile, pidAlive

_POLL = 0.002  # seconds between looks at the pid file and /proc while upgrading


def childrenOf(pid: int) -> set[int]:
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


class Server:
    """
    Where to find the serving pid: a pid file, or a pid and then its successors.

    Without a pid file a successor is recognised as a child of the old process that
    is still alive once the old one has gone (Linux C{/proc}); the moment it became
    ready is then unknown.
    """

    def __init__(self, pidFile: str | None = None, pid: int | None = None) -> None:
        self.pidFile = pidFile
        self._file = PidFile(pidFile) if pidFile is not None else None
        self._pid = pid

    def __str__(self) -> str:
        return f"pid file {self.pidFile}" if self.pidFile else f"pid {self._pid}"

    def current(self) -> int | None:
        """The pid that serves now, if known."""
        if self._file is not None:
            return self._file.read()
        return self._pid

    def validate(self) -> int:
        """
        The serving pid, checked: it runs and we may signal it.

        @raise CheckError: with the reason.
        """
        if self.pidFile is not None:
            try:
                with open(self.pidFile, "rb") as f:
                    text = f.read(64)
            except OSError as e:
                raise CheckError(
                    f"cannot read pid file {self.pidFile}: {e.strerror}"
                ) from None
            pid = PidFile(self.pidFile).read()
            if pid is None:
                raise CheckError(
                    f"pid file {self.pidFile} does not hold a pid: {text[:20]!r}"
                )
        else:
            assert self._pid is not None
            pid = self._pid
        where = f" (from {self.pidFile})" if self.pidFile else ""
        if not pidAlive(pid):
            raise CheckError(f"no process with pid {pid}{where}")
        try:
            os.kill(pid, 0)
        except PermissionError:
            raise CheckError(f"not allowed to signal pid {pid}{where}") from None
        except ProcessLookupError:
            raise CheckError(f"no process with pid {pid}{where}") from None
        return pid

    def successor(self, old: int, children: set[int], oldGone: bool) -> int | None:
        """
        The new serving pid, once it can be told, else None.

        @param children: children of C{old} seen so far (used without a pid file).
        """
        if self._file is not None:
            pid = self._file.read()
            if pid is not None and pid != old and pidAlive(pid):
                return pid
            return None
        if not oldGone:
            return None
        alive = sorted(pid for pid in children if pidAlive(pid))
        if alive:
            self._pid = alive[-1]
            return self._pid
        return None


@dataclasses.dataclass
class Upgrade:
    """
    One upgrade: C{SIGHUP} to C{oldPid} and what followed, in seconds from it.
    """

    number: int
    oldPid: int | None = None
    newPid: int | None = None
    toNew: float | None = None
    toOldGone: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def watchUpgrade(
    server: Server, number: int, old: int, started: float, timeout: float
) -> Upgrade:
    """
    After C{SIGHUP} to C{old} (sent at monotonic time C{started}), wait until the
    server names a new live pid and C{old} is gone, for at most C{timeout} seconds
    from C{started}.
    """
    result = Upgrade(number, oldPid=old)
    children: set[int] = set()
    deadline = started + timeout
    while True:
        now = time.monotonic()
        if result.toOldGone is None:
            if server.pidFile is None:
                children |= childrenOf(old)
            if not pidAlive(old):
                result.toOldGone = now - started
        if result.newPid is None:
            pid = server.successor(old, children, result.toOldGone is not None)
            if pid is not None:
                result.newPid = pid
                if server.pidFile is not None:
                    result.toNew = now - started
        if result.newPid is not None and result.toOldGone is not None:
            return result
        if now >= deadline:
            break
        time.sleep(min(_POLL, max(deadline - now, 0.0)))
    if result.newPid is None and result.toOldGone is None:
        result.error = (
            f"no new pid and pid {old} still running {timeout:g} s after SIGHUP"
        )
    elif result.newPid is None:
        if server.pidFile is None:
            result.error = (
                f"pid {old} exited, but no successor was found among its children"
                " (use --pid-file)"
            )
        else:
            result.error = (
                f"pid {old} exited, but {server.pidFile} named no new live pid"
                f" within {timeout:g} s"
            )
    else:
        result.error = (
            f"new pid {result.newPid} serves, but old pid {old} was still running"
            f" {timeout:g} s after SIGHUP"
        )
    return result


def signalUpgrade(server: Server, number: int, timeout: float) -> Upgrade:
    """
    Send C{SIGHUP} to the serving pid and watch the upgrade (at most C{timeout}).
    """
    old = server.current()
    if old is None or not pidAlive(old):
        what = "no pid" if old is None else f"pid {old}, which is not running"
        return Upgrade(number, oldPid=old, error=f"{server} names {what}")
    started = time.monotonic()
    try:
        os.kill(old, signal.SIGHUP)
    except OSError as e:
        return Upgrade(number, oldPid=old, error=f"cannot signal pid {old}: {e}")
    return watchUpgrade(server, number, old, started, timeout)
