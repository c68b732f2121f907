"""
How a child process ended, in words: the one vocabulary of exit reasons that the
upgrade errors, the log and the supervisor share.
"""

from __future__ import annotations

import signal

from twisted.python.failure import Failure


def cleanExit(reason: Failure) -> bool:
    """
    Whether the process exited with status 0.
    """
    value = reason.value
    return not getattr(value, "signal", None) and getattr(value, "exitCode", 1) == 0


def howItEnded(reason: Failure) -> str:
    """
    C{exited with status 3} / C{was killed by SIGKILL}.
    """
    value = reason.value
    signum = getattr(value, "signal", None)
    status = getattr(value, "exitCode", None)
    if signum:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"was killed by {name}"
    return f"exited with status {status}"


#: The signals that stop a process on purpose: Ctrl-C (to the whole process
#: group), C{systemctl stop}, txflip's own graceful stop.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGQUIT})


def howItStopped(reason: Failure) -> str:
    """
    How a process we asked to stop ended: C{stopped (SIGINT, on request)} /
    C{stopped (status 0, on request)} when it ended the way a stop does (twistd
    ends by re-raising SIGINT or SIGTERM: "killed by SIGINT" would read like a
    crash), L{howItEnded} otherwise (a crash while stopping, or SIGKILL).
    """
    value = reason.value
    signum = getattr(value, "signal", None)
    if signum in STOP_SIGNALS:
        return f"stopped ({signal.Signals(signum).name}, on request)"
    if cleanExit(reason):
        return "stopped (status 0, on request)"
    return howItEnded(reason)


def describeExit(pid: int, reason: Failure | None) -> str:
    """
    C{child pid=N exited with status 3} / C{... was killed by SIGKILL}; only
    C{... exited} when the status is not ours to know (C{reason} None).
    """
    how = howItEnded(reason) if reason is not None else "exited"
    return f"child pid={pid} {how} before it was ready"
