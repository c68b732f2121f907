"""
One call that makes a plain program's log look like a txflip server's under
twistd: each line with the PID that wrote it, generations appending to one file.

A program that is not run by twistd logs nothing until it begins logging: the
first upgrade of such a server looks as if nothing happened, and when it does
log, two generations' lines cannot be told apart.  L{startLogging} is the one
call to make before C{reactor.run()}.
"""

from __future__ import annotations

from twisted.logger import globalLogBeginner

from txflip._log import pidObserverTo


def startLogging(path: str | None = None) -> None:
    """
    Send Twisted's log (and C{print}) to standard output, or to the file at
    C{path}, one line per event with C{[pid N]} after the timestamp, as
    txflip does under twistd.  The file is opened for appending, so that
    generations share it line by line, and reopened on C{SIGUSR1} (for
    logrotate's C{postrotate}).

    @param path: a log file, or L{None} (or C{"-"}) for standard output.
    @raise OSError: the file cannot be opened.
    """
    observer = pidObserverTo(None if path in (None, "-") else path)
    globalLogBeginner.beginLoggingTo([observer])
