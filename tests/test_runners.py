"""
End to end: the runners the README supports for an unmodified Twisted server with
flip: endpoints (twisted.web here): C{twistd -n flip}, C{twistd flip} daemonized,
C{twist}.  (A plain program: test_flip_endpoint.py.)  Each generation's log lines,
access log included, go where the first generation's did, with its PID.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, SUBREAPER, oneLineError, runTwistd, twistdCommand
from tests.harness import (
    ServerProcess,
    pidAlive,
    readPidFile,
    reap,
    waitFor,
    waitForUpgrade,
)

LISTEN = "flip:tcp:0:interface=127.0.0.1"


def site(tmp: Path) -> Path:
    directory = tmp / "www"
    directory.mkdir()
    (directory / "index.html").write_text("hello web\n")
    return directory


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=10) as r:
        body: bytes = r.read()
        return body


def portIn(text: str) -> int:
    match = re.search(r"listening on tcp:127\.0\.0\.1:(\d+)", text)
    assert match, text[-2000:]
    return int(match.group(1))


def upgradeTwice(pidfile: Path, port: int) -> list[int]:
    """
    Two upgrades, each followed by a request; the pids of the three generations.
    """
    pids = [waitFor(lambda: readPidFile(pidfile), 20, what="ready")]
    assert get(port, "index.html") == b"hello web\n"
    for _ in range(2):
        os.kill(pids[-1], signal.SIGHUP)
        new, _, _ = waitForUpgrade(pidfile, pids[-1], timeout=30)
        pids.append(new)
        assert get(port, f"index.html?from={new}") == b"hello web\n"
    return pids


def assertLoggedBy(text: str, pid: int, generation: int) -> None:
    """
    C{pid} wrote its own lines, access log included, each stamped with its PID.
    """
    assert f"generation {generation} ready (pid {pid})" in text, text[-3000:]
    access = re.compile(rf"\[pid {pid}\] .*GET /index\.html\?from={pid} ")
    if generation > 1:
        assert access.search(text), f"no access log line of pid {pid}:\n{text}"


def stop(pids: list[int]) -> None:
    os.kill(pids[-1], signal.SIGQUIT)
    if SUBREAPER:
        reap(pids[-1], 30)
    waitFor(lambda: not pidAlive(pids[-1]), 30, what="the final exit")


@pytest.mark.slow
def test_twistdForegroundLogfileKeepsEveryGeneration(tmp_path: Path) -> None:
    www = site(tmp_path)
    logfile, pidfile = tmp_path / "web.log", tmp_path / "tw.pid"
    argv = [*twistdCommand(), "-n", f"--logfile={logfile}", f"--pidfile={pidfile}"]
    argv += ["flip", "web", "--listen", LISTEN, "--path", str(www)]
    with ServerProcess(
        argv, tmp_path / "stdout", cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}
    ) as proc:
        waitFor(lambda: logfile.exists() and "listening" in logfile.read_text(), 20)
        pids = upgradeTwice(pidfile, portIn(logfile.read_text()))
        for pid in pids[1:]:
            proc.track(pid)
        text = logfile.read_text()
        for generation, pid in enumerate(pids, start=1):
            assertLoggedBy(text, pid, generation)
        assert "GET" not in proc.logText(), "log lines went to stdout"
        stop(pids)
    assert not pidfile.exists()


@pytest.mark.slow
def test_twistdDaemonizedKeepsEveryGeneration(tmp_path: Path) -> None:
    www = site(tmp_path)
    pidfile = tmp_path / "twistd.pid"
    started = runTwistd(
        ["flip", "web", "--listen", LISTEN, "--path", str(www)], tmp_path
    )
    assert started.returncode == 0, started
    logfile = tmp_path / "twistd.log"
    pids: list[int] = []
    try:
        waitFor(lambda: logfile.exists() and "ready" in logfile.read_text(), 20)
        pids = upgradeTwice(pidfile, portIn(logfile.read_text()))
        text = logfile.read_text()
        for generation, pid in enumerate(pids, start=1):
            assertLoggedBy(text, pid, generation)
        stop(pids)
        assert not pidfile.exists()
    finally:
        for pid in pids:
            if pidAlive(pid):
                os.kill(pid, signal.SIGKILL)


def twistCommand() -> list[str]:
    twist = shutil.which("twist", path=os.path.dirname(sys.executable))
    assert twist, "twist is not installed next to the test interpreter"
    return [sys.executable, twist]


def twistTwice(tmp: Path, args: list[str], pidfile: Path) -> tuple[list[int], str]:
    """
    C{twist ARGS --path www}, upgraded twice, then stopped: the pids of its
    generations, and its log.
    """
    argv = [*twistCommand(), *args, "--path", str(site(tmp))]
    with ServerProcess(
        argv, tmp / "web.log", cwd=tmp, env={"PYTHONPATH": str(ROOT)}
    ) as proc:
        waitFor(lambda: "listening" in proc.logText(), 20, what="listening")
        pids = upgradeTwice(pidfile, portIn(proc.logText()))
        for pid in pids[1:]:
            proc.track(pid)
        text = proc.logText()
        stop(pids)
    return pids, text


@pytest.mark.slow
def test_twistWithFlipPlugin(tmp_path: Path) -> None:
    """
    twist has no pid file of its own: the flip plugin's --pidfile names one.  Its
    text log lines carry the PID.
    """
    pidfile = tmp_path / "web.pid"
    argv = ["--log-format=text", "flip", f"--pidfile={pidfile}"]
    pids, text = twistTwice(tmp_path, [*argv, "web", "--listen", LISTEN], pidfile)
    for generation, pid in enumerate(pids, start=1):
        assertLoggedBy(text, pid, generation)
    assert not pidfile.exists()


def test_twistdWithoutFlipPluginIsOneLine(tmp_path: Path) -> None:
    result = runTwistd(["-n", "web", "--listen", LISTEN, "--path", "."], tmp_path)
    line = oneLineError(result)
    assert "needs the flip plugin" in line and "twistd [options] flip PLUGIN" in line


def test_flipPluginNeedsAPlugin(tmp_path: Path) -> None:
    result = runTwistd(["-n", "flip"], tmp_path)
    assert result.returncode != 0
    assert "which plugin should flip run?" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_twistPlainFlipEndpoint(tmp_path: Path) -> None:
    """
    twist without the flip plugin: the flip: endpoint alone upgrades.
    """
    pidfile = tmp_path / "web.pid"
    argv = ["--log-format=text", "web", "--listen", f"{LISTEN}:pidfile={pidfile}"]
    twistTwice(tmp_path, argv, pidfile)
    assert not pidfile.exists()
