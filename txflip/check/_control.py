"""
Upgrading the service under C{txflip check} through its control socket.

A SIGHUP says nothing back; the control socket's C{upgrade} answers once the new
generation serves, or with the service's own reason for a failure ("upgrade in
progress", "child pid=N exited: ...").  The check then waits for the old pid to go,
as it does after a SIGHUP.
"""

from __future__ import annotations

import time

from txflip._errors import CheckError
from txflip.check._pid import Upgrade
from txflip.control._client import CommandError, request
from txflip.generation._pidfile import pidAlive

_POLL = 0.002  # seconds between looks at the old pid


def servingPid(path: str, timeout: float) -> int:
    """
    The pid the service at control socket C{path} says serves.

    @raise CheckError: with the reason.
    """
    try:
        answer = request(path, "status", timeout)
    except CommandError as e:
        raise CheckError(str(e)) from None
    pid = answer.get("pid")
    if not answer.get("ok") or not isinstance(pid, int):
        raise CheckError(f"control socket {path}: {answer.get('error', answer)}")
    return pid


def controlUpgrade(path: str, number: int, timeout: float) -> Upgrade:
    """
    Upgrade through the control socket at C{path}; wait (at most C{timeout} in
    all) for the answer and for the old pid to exit.
    """
    try:
        old = servingPid(path, timeout)
    except CheckError as e:
        return Upgrade(number, error=str(e))
    started = time.monotonic()
    deadline = started + timeout
    try:
        answer = request(path, "upgrade", timeout)
    except CommandError as e:
        return Upgrade(number, oldPid=old, error=str(e))
    if not answer.get("ok"):
        reason = answer.get("error", "no reason given")
        return Upgrade(number, oldPid=old, error=f"the service says: {reason}")
    new = answer.get("pid")
    result = Upgrade(
        number,
        oldPid=old,
        newPid=new if isinstance(new, int) else None,
        toNew=time.monotonic() - started,
    )
    while pidAlive(old):
        if time.monotonic() >= deadline:
            result.error = (
                f"new pid {new} serves, but old pid {old} was still running"
                f" {timeout:g} s after the upgrade request"
            )
            return result
        time.sleep(_POLL)
    result.toOldGone = time.monotonic() - started
    return result
