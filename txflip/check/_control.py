"""
Upgrading the service under C{txflip check} through its control socket.

A SIGHUP says nothing back; the control socket's C{upgrade} answers once the new
generation serves, or with the service's own reason for a failure ("upgrade in
progress", "child pid=N exited: ...").  The check then waits for the old pid to go,
as it does after a SIGHUP.

Under C{txflip run} the pid the control socket names is the supervisor's, which
never changes: what an upgrade replaces there is the workers, so the check follows
the ready workers' pids and waits until every one of them is gone.
"""

from __future__ import annotations

import time

from txflip._errors import CheckError
from txflip.check._pid import Upgrade
from txflip.control._client import CommandError, request
from txflip.generation._pidfile import pidAlive

_POLL = 0.002  # seconds between looks at the old pid


def servingPids(path: str, timeout: float) -> list[int]:
    """
    The pids that serve behind the control socket at C{path}: the service's
    own, or under C{txflip run} its ready workers'.

    @raise CheckError: with the reason.
    """
    try:
        answer = request(path, "status", timeout)
    except CommandError as e:
        raise CheckError(str(e)) from None
    pid = answer.get("pid")
    if not answer.get("ok") or not isinstance(pid, int):
        raise CheckError(f"control socket {path}: {answer.get('error', answer)}")
    if not answer.get("supervisor"):
        return [pid]
    workers = answer.get("workers")
    pids = [
        worker["pid"]
        for worker in (workers if isinstance(workers, list) else [])
        if isinstance(worker, dict)
        and worker.get("state") == "ready"
        and isinstance(worker.get("pid"), int)
    ]
    if not pids:
        raise CheckError(
            f"control socket {path}: txflip run pid {pid} has no ready worker"
        )
    return pids


def controlUpgrade(path: str, number: int, timeout: float) -> Upgrade:
    """
    Upgrade through the control socket at C{path}; wait (at most C{timeout} in
    all) for the answer and for the old pids to exit.
    """
    try:
        olds = servingPids(path, timeout)
    except CheckError as e:
        return Upgrade(number, error=str(e))
    old = olds[0]
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
    while running := [each for each in olds if pidAlive(each)]:
        if time.monotonic() >= deadline:
            many = len(running) > 1
            result.error = (
                f"new pid {new} serves, but old pid{'s' if many else ''}"
                f" {', '.join(map(str, running))} {'were' if many else 'was'}"
                f" still running {timeout:g} s after the upgrade request"
            )
            return result
        time.sleep(_POLL)
    result.toOldGone = time.monotonic() - started
    return result
