"""
C{txflip check}, end to end: real servers, real signals, the real command.

It must see downtime where there is some (a naive server that restarts on SIGHUP)
and none where there is none (flipecho), report a missed upgrade, and refuse bad
input with one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.harness import (
    ServerProcess,
    freePort,
    pidAlive,
    readPidFile,
    waitFor,
)
from tests.harness import (
    txflipCheck as check,
)
from txflip._cli import main
from txflip.check._cli import runCheck
from txflip.check._drive import upgradeTimes
from txflip.check._stats import Latencies

HOST = "127.0.0.1"


@pytest.mark.slow
def test_flipechoUpgradesWithoutErrors(flip) -> None:
    server = flip()
    status, report, stderr = check(
        "--port", str(server.port), "--pid-file", str(server.pidfile),
        "--short-clients", "4", "--long-clients", "2",
        "--duration", "3", "--upgrades", "2", "--upgrade-timeout", "20",
    )  # fmt: skip
    server.track(server.serving())
    assert status == 0, (report, stderr)
    assert report["ok"]
    assert report["short"]["errors"] == 0, report["short"]
    assert report["total"]["errors"] == 0, report["total"]
    assert report["total"]["lost_lines"] == 0
    assert report["short"]["connections"] > 100
    assert report["long"]["lines"] > 100
    assert report["upgrades_completed"] == 2
    pids = [u["old_pid"] for u in report["upgrades"]] + [server.serving()]
    assert len(set(pids)) == 3
    for upgrade in report["upgrades"]:
        assert 0 < upgrade["to_new_s"] <= upgrade["to_old_gone_s"] < 20
    assert report["upgrade_latency_s"]["sighup_to_new_pid"]["p50"] > 0
    assert report["total"]["connect_latency_s"]["p99"] > 0
    assert report["throughput"]["lines_per_s"] > 0


@pytest.mark.slow
def test_flipechoFollowedByPid(flip) -> None:
    """
    Without a pid file, each successor is found as a child of the old process.
    """
    server = flip()
    first = server.serving()
    status, report, stderr = check(
        "--port", str(server.port), "--pid", str(first), "--short-clients", "2",
        "--long-clients", "1", "--duration", "2", "--upgrades", "2",
    )  # fmt: skip
    server.track(server.serving())
    assert status == 0, (report, stderr)
    firstUpgrade, secondUpgrade = report["upgrades"]
    assert firstUpgrade["old_pid"] == first
    assert secondUpgrade["old_pid"] == firstUpgrade["new_pid"]
    assert secondUpgrade["new_pid"] == server.serving()
    assert firstUpgrade["to_new_s"] is None  # unknown without a pid file
    assert firstUpgrade["to_old_gone_s"] > 0


@pytest.fixture
def naive(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """
    tests/naive_server.py: restarts its server when SIGHUP kills it.
    """
    port, pidfile = freePort(), tmp_path / "naive.pid"
    script = ROOT / "tests" / "naive_server.py"
    argv = [sys.executable, str(script), str(port), str(pidfile)]
    with ServerProcess(argv, tmp_path / "naive.log") as wrapper:
        waitFor(
            lambda: readPidFile(pidfile),
            10,
            what=f"the naive server ({wrapper.logText()})",
        )
        yield port, pidfile
        wrapper.send(signal.SIGTERM)


@pytest.mark.slow
def test_naiveRestartIsCaught(naive: tuple[int, Path]) -> None:
    port, pidfile = naive
    status, report, _ = check(
        "--port", str(port), "--pid-file", str(pidfile),
        "--short-clients", "4", "--long-clients", "2",
        "--duration", "2", "--upgrades", "2", "--upgrade-timeout", "10",
    )  # fmt: skip
    assert status == 1
    assert not report["ok"]
    # Every restart is seen as a completed upgrade, and as errors.
    assert report["upgrades_completed"] == 2, report["failures"]
    short = report["short"]["errors_by_kind"]
    assert short["refused"] + short["reset"] > 0, report["short"]
    assert report["total"]["errors"] >= report["total"]["lost_lines"]
    assert report["failures"] == []


@pytest.mark.slow
def test_maxErrorsTolerates(naive: tuple[int, Path]) -> None:
    port, pidfile = naive
    status, report, _ = check(
        "--port", str(port), "--pid-file", str(pidfile), "--short-clients", "2",
        "--long-clients", "0", "--duration", "1", "--upgrades", "1",
        "--max-errors", "1000000",
    )  # fmt: skip
    assert report["total"]["errors"] > 0
    assert status == 0 and report["ok"]


class _Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


@pytest.fixture
def echoPort() -> Iterator[int]:
    """
    A healthy in-process echo server (no upgrades).
    """
    server = socketserver.ThreadingTCPServer((HOST, 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_missedUpgradeIsReported(
    echoPort: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    A process that ignores SIGHUP: the upgrade times out and the check fails,
    in the table, with the reason.  No pid file: C{--pid}.
    """
    code = "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
    code += "print('ready', flush=True); time.sleep(30)"
    deaf = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert deaf.stdout is not None and deaf.stdout.readline() == "ready\n"
        status = main(
            ["check", "--port", str(echoPort), "--pid", str(deaf.pid),
             "--short-clients", "1", "--long-clients", "1", "--duration", "0.5",
             "--upgrades", "1", "--upgrade-timeout", "0.5"]
        )  # fmt: skip
    finally:
        deaf.kill()
        deaf.wait()
    out = capsys.readouterr().out
    assert status == 1
    assert (
        f"upgrade 1: no new pid and pid {deaf.pid} still running 0.5 s after SIGHUP"
        in out
    )
    assert "FAILED: 0 errors (max 0), 0 lost lines, 0/1 upgrades completed" in out
    assert "connect latency" in out and "lines echoed" in out


def test_loadOnlyWithoutPid(echoPort: int, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["check", "--port", str(echoPort), "--upgrades", "0", "--duration", "0.3",
         "--short-clients", "1", "--long-clients", "1", "--json"]
    )  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    assert report["upgrades"] == [] and report["total"]["lines"] > 0


@pytest.mark.slow
def test_waitingCostsNoCpu(echoPort: int) -> None:
    """
    With no upgrade to wait for, the main thread sleeps: a busy loop there took
    the GIL from the clients (4 clients made 150 connections/s, not 2,900).
    """
    started = time.thread_time()
    report = runCheck(
        HOST, echoPort, upgradeOne=None, shortClients=1, longClients=0,
        duration=1.0, upgrades=0, interval=0.005,
        ioTimeout=5, maxErrors=0,
    )  # fmt: skip
    assert report.total.connections > 0
    assert time.thread_time() - started < 0.3


def _deadPid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pidAlive(child.pid)
    return child.pid


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--pid-file", "{tmp}/missing.pid"],
            "cannot read pid file {tmp}/missing.pid: No such file or directory",
        ),
        (
            ["--pid-file", "{tmp}/garbage.pid"],
            "pid file {tmp}/garbage.pid does not hold a pid: b'garbage'",
        ),
        (["--pid", "{dead}"], "no process with pid {dead}"),
        (
            ["--upgrades", "0"],
            "cannot connect to 127.0.0.1:{port}: connection refused",
        ),
        ([], "upgrades need the server's pid: give --pid-file, --pid or --control"),
        (
            ["--pid", "{me}", "--short-clients", "0", "--long-clients", "0"],
            "nothing to do: --short-clients and --long-clients are 0",
        ),
    ],
)
def test_badInputIsOneLine(
    args: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "garbage.pid").write_text("garbage")
    values = {
        "tmp": str(tmp_path),
        "dead": str(_deadPid()),
        "me": str(os.getpid()),
        "port": str(freePort()),
    }
    argv = ["check", "--port", values["port"], "--duration", "0.2"]
    status = main(argv + [a.format(**values) for a in args])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert captured.err == f"txflip check: {message.format(**values)}\n"


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1", "x"])
def test_everyRunEnds(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["check", "--port", "1", "--duration", value])
    assert exited.value.code == 2
    assert f"expected a finite number of seconds >= 0.001, not '{value}'" in (
        capsys.readouterr().err
    )


def test_notAnEchoServer(capsys: pytest.CaptureFixture[str]) -> None:
    class Upper(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline().upper())

    with socketserver.TCPServer((HOST, 0), Upper) as server:
        threading.Thread(target=server.handle_request, daemon=True).start()
        port = server.server_address[1]
        status = main(["check", "--port", str(port), "--upgrades", "0"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"txflip check: 127.0.0.1:{port} does not echo lines")
    assert err.count("\n") == 1


def test_latenciesQuantiles() -> None:
    latencies = Latencies()
    assert latencies.quantile(0.5) is None
    for ms in range(1, 101):
        latencies.add(ms / 1000)
    latencies.add(0)
    assert latencies.count == 101 and latencies.max == 0.1
    assert latencies.quantile(0.5) == pytest.approx(0.050, rel=0.02)
    assert latencies.quantile(0.99) == pytest.approx(0.099, rel=0.02)
    assert latencies.quantile(1.0) == 0.1
    merged = latencies.merge(latencies)
    assert merged.count == 202 and merged.quantile(0.5) == latencies.quantile(0.5)


def test_upgradesAreSpacedOverTheRun() -> None:
    assert upgradeTimes(10, 1) == [5]
    assert upgradeTimes(8, 3) == [2, 4, 6]
    assert upgradeTimes(8, 0) == []


@pytest.mark.slow
def test_upgradesThroughTheControlSocket(flip, tmp_path: Path) -> None:
    """
    C{--control} instead of a pid: the service answers each upgrade request, and
    the check still waits for the old pid to go.
    """
    control = tmp_path / "control.sock"
    server = flip("--control", str(control))
    first = server.serving()
    status, report, stderr = check(
        "--port", str(server.port), "--control", str(control),
        "--short-clients", "2", "--long-clients", "1",
        "--duration", "2", "--upgrades", "1",
    )  # fmt: skip
    server.track(server.serving())
    assert status == 0, (report["failures"], stderr)
    (upgrade,) = report["upgrades"]
    assert upgrade["old_pid"] == first and upgrade["new_pid"] == server.serving()
    assert 0 < upgrade["to_new_s"] <= upgrade["to_old_gone_s"]
    assert not pidAlive(first)


@pytest.mark.slow
def test_progressLineOnATerminal(echoPort: int) -> None:
    """
    On a terminal, stderr shows a live line; the report stays on stdout.
    """
    parent, child = pty.openpty()
    with os.fdopen(parent, "rb", buffering=0) as terminal:
        done = subprocess.run(
            [sys.executable, "-m", "txflip", "check", "--port", str(echoPort),
             "--upgrades", "0", "--duration", "1", "--short-clients", "1",
             "--long-clients", "0"],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=child,
            timeout=30,
        )  # fmt: skip
        os.close(child)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the writer is gone
            while chunk := terminal.read(4096):
                shown += chunk
    assert done.returncode == 0
    assert re.search(rb"\r\s*0\.\d/1 s  connections \d+  lines \d+  errors 0", shown)
    assert shown.endswith(b"\r\x1b[K"), shown[-40:]
    assert b"OK: 0 errors" in done.stdout and b"\r" not in done.stdout
