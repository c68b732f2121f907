"""
End to end: systemd's notify protocol and socket activation, with a real
NOTIFY_SOCKET datagram socket and a real socket passed at fd 3.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SUBREAPER, echo, twistdCommand
from tests.harness import pidAlive, readPidFile, reap, waitFor, waitForUpgrade


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[dict[str, str]] = []

    def receive(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(fields)

    def waitFor(self, count: int, timeout: float = 30) -> list[dict[str, str]]:
        waitFor(
            lambda: len(self.receive()) >= count,
            timeout,
            what=f"{count} notifications (have {self.messages})",
        )
        return self.messages

    def close(self) -> None:
        self.sock.close()


@pytest.mark.slow
def test_notifySequenceAcrossUpgradesAndAFailure(flip, tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    fault = tmp_path / "fault"
    try:
        server = flip(
            env={"NOTIFY_SOCKET": str(notify.path), "FLIPAPP_FAULT": str(fault)},
            app=True,
        )
        pids = [server.serving()]
        notify.waitFor(1)
        for _ in range(2):
            os.kill(pids[-1], signal.SIGHUP)
            new, _, _ = waitForUpgrade(server.pidfile, pids[-1], timeout=30)
            server.track(new)
            pids.append(new)
        fault.write_text("exit")
        os.kill(pids[-1], signal.SIGHUP)
        messages = notify.waitFor(7)
        os.kill(pids[-1], signal.SIGQUIT)
        messages = notify.waitFor(8)
    finally:
        notify.close()
    keys = [sorted(m) for m in messages]
    ready, reloading = (
        ["MAINPID", "READY", "STATUS"],
        ["MONOTONIC_USEC", "RELOADING", "STATUS"],
    )
    assert keys == [
        ready,
        reloading,
        ready,
        reloading,
        ready,
        reloading,
        ["READY", "STATUS"],
        ["STATUS", "STOPPING"],
    ], messages
    assert [m["MAINPID"] for m in messages if "MAINPID" in m] == [str(p) for p in pids]
    assert messages[0]["STATUS"] == f"serving (generation 1, pid {pids[0]})"
    assert messages[1]["STATUS"] == "upgrading: starting generation 2"
    assert "upgrade failed: child pid=" in messages[6]["STATUS"]
    # Detached under systemd (not our child), so the exit status is its reaper's.
    assert "exited before it was ready" in messages[6]["STATUS"]
    assert messages[6]["STATUS"].endswith("serving (generation 3)")
    usec = [int(m["MONOTONIC_USEC"]) for m in messages if "MONOTONIC_USEC" in m]
    assert usec == sorted(usec) and usec[0] > 0
    assert messages[7]["STATUS"].startswith("stopping: draining")


@pytest.mark.parametrize("underSystemd", [True, False], ids=["notify", "plain"])
def test_underSystemdTheNewGenerationIsNotTheOldOnesChild(
    flip, tmp_path: Path, underSystemd: bool
) -> None:
    """
    With NOTIFY_SOCKET set, the next generation is started detached: reparented
    (here to the test, a subreaper) before it runs, so that systemd sees its own
    child when it says MAINPID=, not an "alien" one it does not wait for at stop.
    Without NOTIFY_SOCKET it is the old generation's child.  (A half-sent line
    keeps the old generation draining, alive, while we look.)
    """
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        env = {"NOTIFY_SOCKET": str(notify.path)} if underSystemd else {}
        server = flip(env=env)
        old = server.serving()
        with socket.create_connection(("127.0.0.1", server.port), 10) as held:
            held.sendall(b"half a line")
            os.kill(old, signal.SIGHUP)
            new = waitFor(
                lambda: (p := readPidFile(server.pidfile)) != old and p,
                30,
                what="the new generation",
            )
            server.track(new)
            stat = Path(f"/proc/{new}/stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            assert pidAlive(old)
            assert parent == (os.getpid() if env else old)
            held.sendall(b"\n")
            assert held.recv(100) == b"half a line\n"
        assert reap(old, 30) == 0
        if env:
            assert [m.get("MAINPID") for m in notify.waitFor(2)][-1] == str(new)
        os.kill(new, signal.SIGQUIT)
        assert reap(new, 30) == 0
    finally:
        notify.close()


def test_abstractNotifySocket(flip, tmp_path: Path) -> None:
    name = f"txflip-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    try:
        server = flip(env={"NOTIFY_SOCKET": "@" + name})
        message = sock.recv(4096).decode()
    finally:
        sock.close()
    assert f"MAINPID={server.serving()}\nREADY=1\n" in message


@pytest.mark.parametrize("byName", [False, True], ids=["by-address", "by-name"])
def test_socketActivation(tmp_path: Path, byName: bool) -> None:
    """
    Start flipecho the way systemd does: LISTEN_* set, a listening socket at fd 3,
    asked for by its address or by its name (systemd:name=echo).
    """
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    fd = listening.fileno()
    # LISTEN_PID must be the pid of the exec'ed process: set it in the child
    # between fork and exec, as systemd does.
    launcher = (
        "import os, sys\n"
        f"os.dup2({fd}, 3)\n"
        "os.environ['LISTEN_PID'] = str(os.getpid())\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LISTEN_FDS": "1",
        "LISTEN_FDNAMES": "echo",
    }
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            launcher,
            *twistdCommand(),
            "-n",
            "flipecho",
            "--listen",
            "systemd:name=echo" if byName else f"tcp:{port}:interface=127.0.0.1",
        ],
        cwd=tmp_path,
        env=env,
        pass_fds=(fd,),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    listening.close()
    pidfile = tmp_path / "twistd.pid"
    pids = [proc.pid]
    try:
        waitFor(lambda: readPidFile(pidfile) == proc.pid, 20, what="ready")
        text = (tmp_path / "server.log").read_text()
        assert f"listening on tcp:127.0.0.1:{port} (inherited)" in text
        assert echo(port) == b"hello\n"
        os.kill(proc.pid, signal.SIGHUP)
        new, _, _ = waitForUpgrade(pidfile, proc.pid, timeout=30)
        pids.append(new)
        assert echo(port) == b"hello\n"
        os.kill(new, signal.SIGQUIT)
        if SUBREAPER:
            assert reap(new, 30) == 0
        waitFor(lambda: not pidAlive(new), 30, what="exit")
    finally:
        for pid in pids:
            if pidAlive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(10)
        log.close()


def test_twistedStillKeepsSystemdSockets() -> None:
    """
    The one private Twisted read txflip cannot avoid: when
    twisted.internet.endpoints is imported first it takes LISTEN_FDS from the
    environment, and only C{_SystemdParser._sddaemon} keeps what it found.  If
    Twisted moves it, txflip logs that systemd's sockets are ignored; this test
    says so first.
    """
    from twisted.internet import endpoints
    from twisted.python.systemd import ListenFDs

    assert isinstance(endpoints._SystemdParser._sddaemon, ListenFDs)
