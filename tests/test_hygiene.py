"""
End to end: what a generation leaks, and to whom.

  - fds reach only the next generation, and only those it is meant to have; an
    unrelated subprocess the application starts carelessly (C{close_fds=False})
    inherits none of txflip's fds, before, during and after an upgrade;
  - the handoff marker is gone from the environment the application (and its
    subprocesses) see;
  - the pid file is written atomically, mode 0644 whatever the umask, and a
    symlink planted at its path is replaced, never followed.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Flip, PartialRequest, alone, heldChild, waitLine
from tests.harness import readPidFile, waitFor, waitForUpgrade

STDIO = {"0", "1", "2"}


class Reports:
    """
    Asks a flipapp generation (SIGUSR2) to start its careless subprocess, and
    reads what that subprocess inherited.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir()

    @property
    def env(self) -> dict[str, str]:
        return {"FLIPAPP_REPORT": str(self.directory)}

    def ask(self, pid: int) -> dict[str, Any]:
        before = set(self.directory.glob(f"{pid}-*.json"))
        os.kill(pid, signal.SIGUSR2)
        new = waitFor(
            lambda: set(self.directory.glob(f"{pid}-*.json")) - before,
            20,
            what=f"a subprocess report from pid {pid}",
        )
        (path,) = new
        report: dict[str, Any] = json.loads(path.read_text())
        return report


def fdTargets(pid: int) -> dict[int, str]:
    targets = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass
    return targets


def assertInheritsNothing(report: dict[str, Any], who: str) -> None:
    extra = {fd: target for fd, target in report["fds"].items() if fd not in STDIO}
    assert not extra, f"a subprocess of {who} inherited {extra}"
    assert report["marker"] is False, f"a subprocess of {who} sees the marker"


@pytest.fixture
def reports(tmp_path: Path) -> Reports:
    return Reports(tmp_path / "reports")


def test_fdsReachOnlyTheNextGeneration(
    flip, reports: Reports, tmp_path: Path, partial: list[PartialRequest]
) -> None:
    """
    An unrelated subprocess started by the application (every inheritable fd
    passed, the application's environment) holds nothing of txflip's, whether the
    application is a first generation, one upgrading (pipes to a child open), or a
    later generation whose parent is still draining (its own inherited fds open).
    The next generation itself gets exactly stdio, the two pipes and the listening
    socket, nothing else of its parent's (not the client connections, not the log).
    """
    fault = tmp_path / "fault"
    gate = tmp_path / "go"
    # Not moving: the partial request must keep the parent draining.  (Moving,
    # the child also has fd 6, its end of the moves channel.)
    server: Flip = flip(
        "--no-move", env={"FLIPAPP_FAULT": str(fault), **reports.env}, app=True
    )
    pid = server.serving()
    partial.append(PartialRequest(server.port))
    assertInheritsNothing(reports.ask(pid), "generation 1")

    _, child = heldChild(server, fault, gate)
    assertInheritsNothing(reports.ask(pid), "generation 1 while upgrading")
    # The child, held at its gate before any of its own code ran.
    parentFDs = fdTargets(pid)
    childFDs = fdTargets(child)
    assert set(childFDs) == {0, 1, 2, 3, 4, 5}, childFDs
    assert childFDs[3].startswith("pipe:") and childFDs[4].startswith("pipe:")
    listening = [fd for fd, target in parentFDs.items() if target == childFDs[5]]
    assert listening, f"fd 5 of the child ({childFDs[5]}) is not a parent's socket"
    assert {childFDs[n] for n in (0, 1, 2)} == {parentFDs[n] for n in (0, 1, 2)}

    fault.unlink()
    gate.touch()
    waitFor(lambda: readPidFile(server.pidfile) == child, 20, what="handover")
    waitLine(server, pid, "txflip: draining")
    # The parent drains (the partial request holds it): the child still has its
    # parent pipe open, and must not pass it on.
    assert 4 in fdTargets(child)
    assertInheritsNothing(reports.ask(child), "generation 2 while its parent drains")
    assert partial[0].finish() == b"half a line\n"
    assert server.proc.waitExit(20) == 0
    waitLine(server, child, "previous generation exited")
    assertInheritsNothing(reports.ask(child), "generation 2")
    alone(server, child)


def test_pidfileIsAtomic0644AndNeverFollowsASymlink(flip, tmp_path: Path) -> None:
    """
    A symlink planted at the pid file's path (before the first start, and again
    before an upgrade) is replaced by a regular file; its target is never written.
    The file is mode 0644 even under umask 077, and no temporary file is left.
    """
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    pidfile = tmp_path / "twistd.pid"
    pidfile.symlink_to(victim)

    def regularFileNaming(pid: int) -> None:
        info = os.lstat(pidfile)
        assert stat.S_ISREG(info.st_mode), "the pid file is not a regular file"
        assert stat.S_IMODE(info.st_mode) == 0o644, oct(info.st_mode)
        assert readPidFile(pidfile) == pid
        assert victim.read_text() == "precious\n"
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    old = os.umask(0o077)
    try:
        server: Flip = flip()
    finally:
        os.umask(old)
    pid = server.serving()
    regularFileNaming(pid)

    pidfile.unlink()
    pidfile.symlink_to(victim)
    os.kill(pid, signal.SIGHUP)
    new, _, _ = waitForUpgrade(pidfile, pid, timeout=30)
    server.track(new)
    regularFileNaming(new)

    os.kill(new, signal.SIGQUIT)
    waitFor(lambda: not pidfile.exists(), 20, what="the pid file to be removed")
    assert victim.read_text() == "precious\n"
