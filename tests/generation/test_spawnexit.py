"""
A child that exits before C{spawnProcess} returns: Twisted reaps it in there
(C{registerReapProcessHandler}) and forgets its pid (C{transport.pid} is None),
so the pid an attempt reports must be the one it had before.  Seen for real
under C{txflip run}: a deploy whose command fails at once was reported as
"child pid=0 exited with status 3".
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from txflip._errors import ChildFailed
from txflip._reactor import asReactor
from txflip.generation._command import Command
from txflip.generation._spawn import Spawn, SpawnAttempt


class ReapedInsideSpawn:
    """
    The real reactor, except that C{spawnProcess} returns only once the child
    has exited and has been reaped: what Twisted does when the child is quick.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.pids: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def spawnProcess(self, protocol: Any, *args: Any, **kwargs: Any) -> Any:
        connect = protocol.makeConnection

        def makeConnection(transport: Any) -> None:
            self.pids.append(transport.pid)  # the one moment it is known
            connect(transport)

        protocol.makeConnection = makeConnection
        process = self._reactor.spawnProcess(protocol, *args, **kwargs)
        if process.pid is not None:  # else Twisted reaped it already
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
            process.reapProcess()
        assert process.pid is None  # what the attempt has to live with
        return process


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="os.waitid(WNOWAIT): Linux"
)
@pytest_twisted.ensureDeferred
async def test_childReapedInsideSpawnProcessIsNamedByItsPid() -> None:
    from twisted.internet import reactor

    quick = ReapedInsideSpawn(reactor)
    command = Command("/bin/sh", ("sh", "-c", "exit 3"), os.getcwd())
    attempt = SpawnAttempt(
        asReactor(quick), Spawn(command, dict(os.environ), 2, [], 10.0), detach=False
    )
    assert attempt.pid == quick.pids[0]
    failed: Deferred[Any] = attempt.result.addTimeout(10, reactor)
    with pytest.raises(ChildFailed) as error:
        await failed
    assert str(error.value) == (
        f"child pid={quick.pids[0]} exited with status 3 before it was ready"
    )
