"""
The pid file: always names the generation that serves.

Each generation writes it when it becomes ready, atomically (a temporary file in the
same directory, then C{rename}), so a reader never sees it empty or half-written and a
symlink planted at the path is replaced, never followed.  Only a final stop removes it,
and only while it still names us: an old generation exiting after an upgrade leaves
its successor's file alone.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import time

from txflip._errors import PidFileError


def pidAlive(pid: int) -> bool:
    """
    Whether C{pid} runs; a zombie counts as dead (an exited server nobody reaped
    yet has exited, which is what matters here).
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


def startTime(pid: int) -> float | None:
    """
    When C{pid} started (seconds since the epoch, to about 10 ms), where the
    platform tells (Linux); L{None} elsewhere or when it is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        ticks = int(stat[stat.rfind(b")") + 1 :].split()[19])
        sinceBoot = time.clock_gettime(time.CLOCK_BOOTTIME)
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.time() - (sinceBoot - ticks / os.sysconf("SC_CLK_TCK"))


#: The capability that lets a process replace other users' files (Linux).
CAP_FOWNER = 3


def _mayOverrideOwners() -> bool:
    """
    Whether we may replace a file we do not own in a sticky directory: we have
    CAP_FOWNER (Linux), or are root (elsewhere).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_FOWNER & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


#: What an existing path may be instead of a regular file (or a symlink, which
#: is replaced, never followed), as the refusal names it.
_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _refuseNonRegular(path: str) -> None:
    """
    Refuse a pid file path that exists and is not a regular file: the pid file is
    replaced by renaming over it and removed at the final stop, which would
    destroy a device node (C{--pidfile /dev/null} as root replaced the machine's
    C{/dev/null}), and reading a FIFO blocks.

    @raise PidFileError: naming what is there.
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return
    for isKind, kind in _KINDS:
        if isKind(mode):
            raise PidFileError(
                f"cannot write pid file {path}: it exists and is {kind}, not a"
                " regular file; use another pid file"
            )


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def __repr__(self) -> str:
        return f"PidFile({self.path!r})"

    def read(self) -> int | None:
        """
        The pid the file names, or L{None} when missing or not a pid.
        """
        try:
            # Without blocking on a FIFO; nothing but a regular file names a pid.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            text = os.read(fd, 64)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            pid = int(text.strip())
        except ValueError:
            return None
        return pid if pid > 0 else None

    def check(self, allowed: tuple[int, ...] = ()) -> None:
        """
        Refuse to start when the file names another live process (one not in
        C{allowed}), and make sure we will be able to write it.

        @raise PidFileError: with a one-line reason.
        """
        _refuseNonRegular(self.path)
        pid = self.read()
        if pid is not None and pid not in allowed and pid != os.getpid():
            if pidAlive(pid):
                raise PidFileError(
                    f"another server is running, PID {pid} (pid file {self.path});"
                    " stop it, or use another --pidfile"
                )
        directory = os.path.dirname(self.path)
        where = f"cannot write pid file {self.path}:"
        if not os.path.isdir(directory):
            if os.path.lexists(directory):
                raise PidFileError(f"{where} {directory} is a file, not a directory")
            raise PidFileError(f"{where} directory {directory} does not exist")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PidFileError(f"{where} directory {directory} is not writable")
        self._checkReplaceable(directory, where)

    def _checkReplaceable(self, directory: str, where: str) -> None:
        """
        We replace the file by renaming over it: in a sticky directory (C{/tmp},
        C{/run/lock}) only the file's owner, the directory's, or a process with CAP_FOWNER
        (root) may.
        """
        try:
            existing = os.lstat(self.path)
            parent = os.stat(directory)
        except OSError:
            return
        if (
            parent.st_mode & stat.S_ISVTX
            and os.geteuid() not in (existing.st_uid, parent.st_uid)
            and not _mayOverrideOwners()
        ):
            raise PidFileError(
                f"{where} it belongs to uid {existing.st_uid} and {directory} is"
                " sticky (only the file's owner may replace it); remove it, or use"
                " another --pidfile"
            )

    def write(self, pid: int) -> None:
        """
        Atomically make the file name C{pid}, mode 0644.

        @raise PidFileError: with a one-line reason.
        """
        directory, name = os.path.split(self.path)
        try:
            fd, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
        except OSError as e:
            raise PidFileError(
                f"cannot write pid file {self.path}: {e.strerror}"
            ) from None
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, f"{pid}\n".encode())
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(temporary, self.path)
        except OSError as e:
            if fd != -1:
                os.close(fd)
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise PidFileError(
                f"cannot write pid file {self.path}: {e.strerror}"
            ) from None

    def removeIfOurs(self, pid: int) -> bool:
        """
        Remove the file if it names C{pid}.
        """
        if self.read() != pid:
            return False
        try:
            os.unlink(self.path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
        return True
