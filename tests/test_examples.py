"""
The tutorial's code, run as the tutorial runs it: C{examples/hello.py} serves, and
C{examples/hello_upgradable.py}, after its C{VERSION} is edited, upgrades under
C{txflip check --http} with no client error.  The documentation includes these
files (C{literalinclude}), so what it shows is what this test ran.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.harness import (
    ServerProcess,
    freePort,
    pidAlive,
    readPidFile,
    txflipCheck,
    waitFor,
)

EXAMPLES = ROOT / "examples"


def get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as reply:
        body: bytes = reply.read()
    return body.decode()


def serving(port: int) -> str | None:
    try:
        return get(port)
    except OSError:
        return None


def test_plainServerServes(tmp_path: Path) -> None:
    port = freePort()
    argv = [
        sys.executable,
        str(EXAMPLES / "hello.py"),
        f"tcp:{port}:interface=127.0.0.1",
    ]
    with ServerProcess(argv, tmp_path / "hello.log", cwd=tmp_path) as proc:
        reply = waitFor(lambda: serving(port), 20, what="hello.py serving")
        assert reply == f"hello from version 1, pid {proc.pid}\n"


@pytest.mark.slow
def test_tutorialUpgradeNoClientNotices(tmp_path: Path) -> None:
    for name in ("hello.py", "hello_upgradable.py"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    port = freePort()
    pidfile = tmp_path / "hello.pid"
    argv = [
        sys.executable,
        "hello_upgradable.py",
        f"tcp:{port}:interface=127.0.0.1",
        str(pidfile),
    ]
    with ServerProcess(
        argv, tmp_path / "hello.log", cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}
    ) as proc:
        first = waitFor(lambda: readPidFile(pidfile), 20, what="ready")
        assert get(port) == f"hello from version 1, pid {first}\n"
        source = tmp_path / "hello.py"
        source.write_text(source.read_text().replace("VERSION = 1", "VERSION = 2"))
        status, report, stderr = txflipCheck(
            "--http", f"http://127.0.0.1:{port}/", "--pid-file", str(pidfile),
            "--duration", "5", "--upgrades", "2", "--upgrade-timeout", "20",
            "--short-clients", "2", "--long-clients", "2",
        )  # fmt: skip
        last = readPidFile(pidfile)
        assert last is not None
        proc.track(last)
        assert status == 0, (report["failures"], stderr)
        assert report["upgrades_completed"] == 2
        assert report["total"]["errors"] == 0, report["total"]
        assert last != first
        assert get(port) == f"hello from version 2, pid {last}\n"
        assert proc.waitExit(20) == 0
        os.kill(last, signal.SIGQUIT)
        waitFor(lambda: not pidAlive(last), 30, what="the final exit")
        assert not pidfile.exists()
