"""
End to end: `txflip upgrade` and `txflip status` against a running flipecho, through
its control socket or its pid file; bad input on the control socket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tests.conftest import ROOT, echo
from tests.harness import allGone, killedAtEnd, pidAlive, waitFor
from txflip.control._server import ControlFactory, ControlProtocol


def txflip(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "txflip", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_upgradeAndStatusThroughControlSocket(flip, tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    fault = tmp_path / "fault"
    server = flip(
        "--control", str(control), env={"FLIPAPP_FAULT": str(fault)}, app=True
    )
    assert stat.S_IMODE(control.stat().st_mode) == 0o600
    first = server.serving()

    status = txflip("status", "--control", str(control), "--json")
    assert status.returncode == 0, status
    state = json.loads(status.stdout)
    assert state["pid"] == first and state["generation"] == 1 and state["ready"]
    assert state["lastUpgrade"] is None

    done = txflip("upgrade", "--control", str(control))
    assert done.returncode == 0, done
    second = int(done.stdout)
    server.track(second)
    # The command returns once the new generation serves: the pid file says so.
    assert server.serving() == second
    assert echo(server.port) == b"hello\n"

    # Right away: the previous generation may still be draining.
    waitFor(lambda: not pidAlive(first), 30, what="the old generation to exit")
    fault.write_text("exit")
    failed = txflip("upgrade", "--control", str(control))
    assert failed.returncode == 1
    assert failed.stderr.startswith("txflip upgrade: upgrade failed: child pid=")
    assert "exited with status 3" in failed.stderr
    assert len(failed.stderr.splitlines()) == 1
    assert server.serving() == second

    human = txflip("status", "--control", str(control))
    assert human.returncode == 0, human
    assert f"pid          {second}" in human.stdout
    assert "generation   2" in human.stdout
    assert "last upgrade failed: child pid=" in human.stdout

    server.signal(signal.SIGQUIT)
    waitFor(lambda: not control.exists(), 30, what="the control socket to go")


def test_upgradeWithPidFile(flip, tmp_path: Path) -> None:
    server = flip()
    old = server.serving()
    done = txflip("upgrade", "--pid-file", str(server.pidfile))
    assert done.returncode == 0, done
    new = int(done.stdout)
    server.track(new)
    assert new != old and server.serving() == new


def test_upgradeErrorsAreOneLine(tmp_path: Path) -> None:
    missing = txflip("upgrade", "--control", str(tmp_path / "nope.sock"))
    assert missing.returncode == 1
    assert missing.stderr.startswith("txflip upgrade: cannot reach the control socket")
    (tmp_path / "bad.pid").write_text("garbage")
    bad = txflip("upgrade", "--pid-file", str(tmp_path / "bad.pid"))
    assert bad.returncode == 1
    assert bad.stderr.strip() == f"txflip upgrade: no pid in {tmp_path / 'bad.pid'}"


@pytest.mark.slow
def test_upgradeTimeoutWithPidFile(flip, tmp_path: Path) -> None:
    fault = tmp_path / "fault"
    server = flip(
        "--upgrade-timeout", "30", env={"FLIPAPP_FAULT": str(fault)}, app=True
    )
    fault.write_text("hang")
    result = txflip("upgrade", "--pid-file", str(server.pidfile), "--timeout", "1")
    assert result.returncode == 1
    assert "timed out after 1 s" in result.stderr
    # Clean up the hanging child now rather than after 30 s.
    server.signal(signal.SIGQUIT)


def test_garbageOnControlSocket(flip, tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    server = flip(
        "--control", str(control), "--control-timeout", "0.5", "--idle-grace", "0.2"
    )
    pid = server.serving()

    def exchange(payload: bytes, shutdown: bool = False) -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(control))
            s.sendall(payload)
            if shutdown:
                s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data

    assert b"unknown command" in exchange(b"\x00\xff garbage\n")
    assert b"request too long" in exchange(b"x" * 100_000)
    assert exchange(b"", shutdown=True) in (b"",)
    # A client that sends half a line and waits is answered with a timeout: the
    # one --control-timeout asks for, not the default 5 s.
    start = time.monotonic()
    assert b"request timed out" in exchange(b"stat")
    assert 0.5 <= time.monotonic() - start < 4
    # The service is unaffected.
    assert server.serving() == pid
    assert echo(server.port) == b"hello\n"
    assert json.loads(exchange(b"status\n"))["pid"] == pid


@pytest.mark.slow
def test_concurrentUpgradeRequestsShareOneUpgrade(flip, tmp_path: Path) -> None:
    """
    A second `txflip upgrade` while one runs waits for the same outcome instead of
    failing with "upgrade in progress" (systemd may reload while an operator does).
    """
    control = tmp_path / "control.sock"
    fault, gate = tmp_path / "fault", tmp_path / "gate"
    server = flip(
        "--control", str(control), env={"FLIPAPP_FAULT": str(fault)}, app=True
    )
    # The next generation starts only once the gate exists: the test decides.
    fault.write_text(f"gate:{gate}")
    command = [sys.executable, "-m", "txflip", "upgrade", "--control", str(control)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    with killedAtEnd(first):
        waitFor(lambda: "started generation 2" in server.logText(), 20, what="spawn")
        second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        with killedAtEnd(second):
            waitFor(
                lambda: "joins the upgrade in progress" in server.logText(),
                20,
                what="the second request to join",
            )
            gate.write_text("")
            out, _ = first.communicate(timeout=60)
            out2, _ = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0
    assert int(out) == int(out2) == server.serving()
    server.track(int(out))
    assert server.logText().count("started generation") == 1


def test_upgradeWithPidFileRefusesAReusedPid(tmp_path: Path) -> None:
    """
    The pid file names a pid that another process now has (the service died and
    the pid was reused): that process is not signalled.
    """
    pidfile = tmp_path / "app.pid"
    other = subprocess.Popen(["sleep", "60"])
    try:
        pidfile.write_text(f"{other.pid}\n")
        os.utime(pidfile, (time.time() - 5, time.time() - 5))
        result = txflip("upgrade", "--pid-file", str(pidfile), "--timeout", "2")
        assert result.returncode == 1
        assert result.stderr == (
            f"txflip upgrade: pid {other.pid} from {pidfile} is not the service: it"
            " started after the file was written (the service's pid was reused by"
            " another process); not signalled\n"
        )
        assert other.poll() is None, "the unrelated process was signalled"
    finally:
        other.kill()
        other.wait()


@pytest.mark.slow
def test_statusShowsHowThisGenerationStarted(flip, tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    server = flip("--control", str(control))
    first = server.serving()
    state = json.loads(txflip("status", "--control", str(control), "--json").stdout)
    assert state["startedBy"]["pid"] is None and state["startedBy"]["readyIn"] > 0
    for _ in range(3):
        old = server.serving()
        done = txflip("upgrade", "--control", str(control))
        assert done.returncode == 0, done
        server.track(int(done.stdout))
        waitFor(allGone(old), 30, what="the old generation exit")
    serving = server.serving()
    state = json.loads(txflip("status", "--control", str(control), "--json").stdout)
    assert state["pid"] == serving and state["generation"] == 4
    started = state["startedBy"]
    assert started["pid"] not in (None, first, serving)
    assert 0 < started["readyIn"] < 30
    assert abs(started["at"] - time.time()) < 60
    human = txflip("status", "--control", str(control)).stdout
    assert f"started by   upgrade from pid {started['pid']} at " in human
    assert ", ready in " in human


class Controlled:
    """
    The little a control socket needs of its service (L{txflip.control._server.Controlled}).
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.upgrades: list[bool] = []

    def status(self) -> dict[str, object]:
        return {"pid": 1}

    def upgrade(self, join: bool = False) -> Deferred[int]:
        self.upgrades.append(join)
        return succeed(2)


class Transport(StringTransport):
    halfClosed = False

    def loseWriteConnection(self) -> None:
        self.halfClosed = True


def connected(
    service: Controlled, requestTimeout: float
) -> tuple[ControlProtocol, Transport]:
    protocol = ControlFactory(service, requestTimeout).buildProtocol(None)
    transport = Transport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_requestTimeoutIsConfigurable() -> None:
    """
    The control socket needs only status, upgrade and a clock of its service; a
    client that never finishes its line is answered after C{requestTimeout}.
    """
    service = Controlled()
    protocol, transport = connected(service, requestTimeout=0.5)
    protocol.dataReceived(b"stat")
    service.clock.advance(0.4)
    assert transport.value() == b""
    service.clock.advance(0.1)
    assert json.loads(transport.value()) == {"ok": False, "error": "request timed out"}
    assert transport.halfClosed


def test_upgradeJoinsThroughTheInterface() -> None:
    service = Controlled()
    protocol, transport = connected(service, requestTimeout=5)
    protocol.dataReceived(b"upgrade\n")
    assert service.upgrades == [True]
    assert json.loads(transport.value()) == {"ok": True, "pid": 2}
    assert transport.disconnecting
