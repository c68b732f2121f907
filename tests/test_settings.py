"""
Durations are checked in one place (txflip._settings) for every entry point:
twistd options, flip: settings, the constructors, the txflip command.  The error
names the setting; process-wide settings cannot be changed by a later endpoint.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PLAIN, ROOT, oneLineError, runTwistd, twistdCommand
from tests.harness import ServerProcess, found, readPidFile, waitFor
from txflip import Upgrader, UpgradeService
from txflip._settings import SettingError, seconds
from txflip.generation._process import ProcessState

BAD = ["nan", "inf", "-inf", "-5", "0", "abc", "", "1e-9"]


@pytest.mark.parametrize("value", [*BAD, math.nan, math.inf, -1.0, 0, True, None])
def test_secondsRefuses(value: object) -> None:
    with pytest.raises(SettingError, match=r"^drainTimeout must be a finite number"):
        seconds("drainTimeout", value)


@pytest.mark.parametrize("value, expected", [("1.5", 1.5), (2, 2.0), ("1e-3", 1e-3)])
def test_secondsAccepts(value: object, expected: float) -> None:
    assert seconds("x", value) == expected


def test_constructorsRefuse() -> None:
    with pytest.raises(SettingError, match=r"^upgradeTimeout must be"):
        Upgrader(upgradeTimeout=math.nan, environ={}, process=ProcessState())
    upgrader = Upgrader(environ={}, process=ProcessState())
    try:
        with pytest.raises(SettingError, match=r"^idleGrace must be"):
            UpgradeService(upgrader, idleGrace=-1, installSignalHandlers=False)
        with pytest.raises(SettingError, match=r"^drainTimeout must be"):
            UpgradeService(upgrader, drainTimeout=math.inf, installSignalHandlers=False)
    finally:
        upgrader.listeners.close(unlink=False)


@pytest.mark.parametrize(
    "option", ["drain-timeout", "upgrade-timeout", "idle-grace", "control-timeout"]
)
@pytest.mark.parametrize("value", ["nan", "-5", "abc"])
def test_twistdOptionsNameTheOption(tmp_path: Path, option: str, value: str) -> None:
    for plugin in (["flipecho"], ["flip", f"--{option}={value}", "web"]):
        args = ["-n", *plugin]
        if plugin == ["flipecho"]:
            args.append(f"--{option}={value}")
        result = runTwistd([*args, "--listen", "tcp:0:interface=127.0.0.1"], tmp_path)
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert f"--{option} must be a finite number of seconds" in output, output
        assert "Traceback" not in output


def plain(tmp: Path, *descriptions: str) -> subprocess.CompletedProcess[str]:
    """
    A plain program parsing C{descriptions} with serverFromString, then exiting.
    """
    code = PLAIN.replace(
        "endpoint = serverFromString(reactor, sys.argv[1])\n"
        "endpoint.listen(Factory.forProtocol(Echo))\n"
        "reactor.run()\n",
        "for d in sys.argv[1:]:\n    serverFromString(reactor, d)\nprint('parsed')\n",
    )
    assert code != PLAIN
    return subprocess.run(
        [sys.executable, "-c", code, *descriptions],
        cwd=tmp,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    "setting, message",
    [
        ("drainTimeout=-5", "drainTimeout must be a finite number of seconds"),
        ("upgradeTimeout=nan", "upgradeTimeout must be a finite number of seconds"),
        ("upgradeTimeout=abc", "upgradeTimeout must be a finite number of seconds"),
        ("idleGrace=inf", "idleGrace must be a finite number of seconds"),
    ],
)
def test_flipSettingsNameTheSetting(tmp_path: Path, setting: str, message: str) -> None:
    result = plain(tmp_path, f"flip:tcp:0:interface=127.0.0.1:{setting}")
    assert result.returncode != 0 and "parsed" not in result.stdout
    assert f"flip:tcp:0:interface=127.0.0.1: {message}" in result.stderr


@pytest.mark.slow
def test_laterEndpointCannotChangeASetting(tmp_path: Path) -> None:
    first = "flip:tcp:0:interface=127.0.0.1:drainTimeout=5"
    result = plain(tmp_path, first, "flip:tcp:0:interface=127.0.0.1:drainTimeout=99")
    assert result.returncode != 0 and "parsed" not in result.stdout
    assert (
        "drainTimeout=99 conflicts with drainTimeout=5.0, fixed by the first flip:"
        " endpoint of this process" in result.stderr
    )
    # Repeating the same value, or leaving it out, is fine.
    same = plain(tmp_path, first, "flip:tcp:0:interface=127.0.0.1:drainTimeout=5.0")
    assert same.returncode == 0 and "parsed" in same.stdout, same.stderr
    omitted = plain(tmp_path, first, "flip:tcp:0:interface=127.0.0.1")
    assert omitted.returncode == 0, omitted.stderr


def test_flipSettingConflictingWithTwistdFlipOptions(tmp_path: Path) -> None:
    result = runTwistd(
        [
            "-n",
            "flip",
            "--drain-timeout=5",
            "web",
            "--listen",
            "flip:tcp:0:interface=127.0.0.1:drainTimeout=99",
        ],
        tmp_path,
    )
    line = oneLineError(result)
    assert (
        "drainTimeout=99 conflicts with drainTimeout=5.0, fixed by the flip plugin's"
        in line
    )


def test_flipSettingConflictsOnlyWithAGivenPluginOption(tmp_path: Path) -> None:
    """
    The flip plugin's option fixes a setting only when it is given: given, even
    at its default, a different value in a description is refused.
    """
    result = runTwistd(
        [
            "-n",
            "flip",
            "--drain-timeout=30",
            "web",
            "--listen",
            "flip:tcp:0:interface=127.0.0.1:drainTimeout=12",
        ],
        tmp_path,
    )
    assert oneLineError(result) == (
        "txflip: flip:tcp:0:interface=127.0.0.1: drainTimeout=12 conflicts with"
        " drainTimeout=30.0, fixed by the flip plugin's options"
    )


@pytest.mark.slow
def test_flipSettingUsedWhenThePluginOptionIsNotGiven(tmp_path: Path) -> None:
    """
    C{twistd -n flip web --listen flip:...:drainTimeout=1.5}, the plugin's
    C{--drain-timeout} not given: accepted, and used: a client holding half a
    request is aborted 1.5 s into the drain, not at the default 30 s.
    """
    pidfile = tmp_path / "web.pid"
    argv = [
        *twistdCommand(),
        "-n",
        f"--pidfile={pidfile}",
        "flip",
        "web",
        "--listen",
        "flip:tcp:0:interface=127.0.0.1:drainTimeout=1.5",
        "--path",
        str(tmp_path),
    ]
    with ServerProcess(
        argv, tmp_path / "web.log", cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}
    ) as proc:
        waitFor(
            lambda: readPidFile(pidfile) or proc.poll() is not None,
            20,
            what="ready",
        )
        assert proc.poll() is None, proc.logText()
        port = int(found(r"listening on tcp:127\.0\.0\.1:(\d+)", proc.logText()))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.1 200 ")  # accepted
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            began = time.monotonic()
            proc.send(signal.SIGQUIT)
            assert proc.waitExit(20) == 0
            took = time.monotonic() - began
        assert 1.4 < took < 10, (took, proc.logText())
        assert "drain timeout" in proc.logText()


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "x"])
def test_cliDurations(value: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "txflip",
            "upgrade",
            "--pid-file",
            "x",
            "--timeout",
            value,
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert (
        f"argument --timeout: expected a finite number of seconds >= 0.001, not"
        f" {value!r}" in result.stderr
    )
