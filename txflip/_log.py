"""
Logging for processes that replace themselves: every line carries the PID that wrote
it, and generations sharing one log file append to it without overwriting each other.

twistd's own log file (C{twisted.python.logfile.LogFile}) opens an existing file
C{rb+} and seeks to its end: two generations writing it keep separate offsets and
overwrite each other's lines, and both would rotate it.  Here the file is opened
C{O_APPEND} and each event is one C{write()}; rotation is left to the operator's
logrotate (C{copytruncate}, or C{postrotate kill -USR1}: we reopen the file on
SIGUSR1).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TextIO

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    formatEventAsClassicLogText,
)

from txflip._reactor import reactorOrGlobal
from txflip.generation._signals import installedHandler


def formatWithPID(event: LogEvent) -> str | None:
    """
    Twisted's classic text line, with C{[pid N]} after the timestamp, e.g.
    C{2026-11-25T14:00:00+0000 [pid 4242] [-] txflip: generation 2 ready}.
    """
    text = formatEventAsClassicLogText(event)
    if text is None:
        return None
    stamp, sep, rest = text.partition(" [")
    return f"{stamp} [pid {os.getpid()}]{sep and ' ['}{rest}"


class AppendFile:
    """
    A minimal text file for L{FileLogObserver}: C{O_APPEND}, one C{write()} per
    event, reopened on demand.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
        )

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def flush(self) -> None:
        pass

    def reopen(self) -> None:
        fd = self._open()
        os.close(self._fd)
        self._fd = fd


def pidObserver(outFile: TextIO | AppendFile) -> ILogObserver:
    return FileLogObserver(outFile, formatWithPID)  # type: ignore[arg-type]


def reopenOnUSR1(target: AppendFile | None, reactor: object | None = None) -> None:
    """
    SIGUSR1 reopens C{target} (logrotate's C{postrotate kill -USR1}); with no file
    it does nothing, so that a rotator or C{systemctl kill -s USR1} never kills a
    generation.  An application's own SIGUSR1 handler is left alone.

    @param reactor: the reactor the reopening is handed to (a signal handler
        only hands over); by default Twisted's global one, looked up only when
        the signal comes, so that setting up logging never installs a reactor.
    """
    if not hasattr(signal, "SIGUSR1") or installedHandler(signal.SIGUSR1):
        return

    def reopen(signum: int, frame: object) -> None:
        if target is not None:
            reactorOrGlobal(reactor).callFromThread(target.reopen)

    signal.signal(signal.SIGUSR1, reopen)


def twistdObserverFactory(
    logfile: str | None,
    nodaemon: bool,
    syslog: bool,
    prefix: str,
    json: bool = False,
) -> Callable[[], Any]:
    """
    An observer factory that makes the same choices twistd would from its options
    (syslog, stdout, or a log file, default C{twistd.log} for a daemon), with the
    PID on every line.

    @raise OSError: (from the factory) the log file cannot be opened.

    @param nodaemon: whether the I{first} generation ran in the foreground; later
        generations always do, but log where it did.
    @param json: JSON lines (L{txflip._jsonlog}) instead of text.
    """
    from txflip._jsonlog import jsonObserver

    observer = jsonObserver if json else pidObserver

    def factory() -> Any:
        if syslog:
            import syslog as stdsyslog

            from twisted.python import syslog as txsyslog

            return txsyslog.SyslogObserver(prefix, options=stdsyslog.LOG_PID).emit
        if logfile == "-" or (nodaemon and not logfile):
            return pidObserverTo(None, observer)
        return pidObserverTo(logfile or "twistd.log", observer)

    return factory


def pidObserverTo(
    path: str | None, make: Callable[[Any], ILogObserver] = pidObserver
) -> ILogObserver:
    """
    An observer writing PID-stamped lines to the file at C{path} (appending,
    reopened on SIGUSR1), or to standard output if C{path} is L{None}; C{make}
    makes it from the file (L{pidObserver}, or JSON lines).

    @raise OSError: the file cannot be opened.
    """
    if path is None:
        reopenOnUSR1(None)
        return make(sys.stdout)
    target = AppendFile(path)
    reopenOnUSR1(target)
    return make(target)
