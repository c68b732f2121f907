"""
A container's PID 1 for real: a new PID namespace (C{unshare --pid --fork
--mount-proc}) with Debian's tini (unpacked by C{.ci/real-env}), as C{docker run
--init} runs it.  Direct mode cannot work there: tini exits when its child exits,
and the namespace dies with it.  This test keeps the README's word on it honest.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, twistdCommand, txflipScript
from tests.harness import canConnect, freePort, waitFor
from tests.realsystemd import TOOLS, require


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        here = todo.pop()
        try:
            children = Path(f"/proc/{here}/task/{here}/children").read_text().split()
        except OSError:
            continue
        found += [int(c) for c in children]
        todo += [int(c) for c in children]
    return found


def test_tiniEndsTheNamespaceAtTheFirstDirectUpgrade(tmp_path: Path) -> None:
    require("usr/bin/tini")
    port = freePort()
    argv = [
        "unshare", "--pid", "--fork", "--mount-proc", str(TOOLS / "usr/bin/tini"),
        "--", *twistdCommand(), "-n", "--pidfile=", "flipecho",
        "--listen", f"tcp:{port}:interface=127.0.0.1",
    ]  # fmt: skip
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        waitFor(lambda: canConnect("127.0.0.1", port), 30, what="flipecho to listen")
        servers = [
            p
            for p in descendants(proc.pid)
            if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]
            == twistdCommand()[0].encode()
        ]
        assert len(servers) == 1, servers
        os.kill(servers[0], signal.SIGHUP)
        # The upgrade starts a new generation, the old one exits, tini follows
        # it, and the kernel kills what was left in the namespace.
        assert proc.wait(30) is not None
        assert not canConnect("127.0.0.1", port)
        assert not any(Path(f"/proc/{p}").exists() for p in servers)
    finally:
        if proc.poll() is None:
            proc.kill()  # unshare: its namespace's PID 1 goes with it
            proc.wait(10)


def nsPid(pid: int) -> int | None:
    """
    C{pid}'s pid in its own (innermost) namespace.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return None


def zombies(pid: int) -> list[int]:
    found = []
    for p in descendants(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            found.append(p)
    return found


@pytest.mark.slow
def test_txflipRunAsPid1UpgradesAndDrains(tmp_path: Path) -> None:
    """
    C{txflip run} as the namespace's PID 1 (no tini): upgrades keep serving, no
    zombie is left, SIGTERM drains (a request in flight is answered).
    """
    require()
    port = freePort()
    control = tmp_path / "control.sock"
    txflip = txflipScript()
    argv = [
        "unshare", "--pid", "--fork", "--mount-proc", txflip, "run",
        "--control", str(control), "--", *twistdCommand(), "-n", "--pidfile=",
        "flipecho", "--listen", f"tcp:{port}:interface=127.0.0.1",
    ]  # fmt: skip
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    try:
        waitFor(lambda: canConnect("127.0.0.1", port), 30, what="flipecho to listen")
        [pid1] = [p for p in descendants(proc.pid) if nsPid(p) == 1]
        for _ in range(2):
            upgraded = subprocess.run(
                [txflip, "upgrade", "--control", str(control)],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert upgraded.returncode == 0, upgraded.stderr
            assert canConnect("127.0.0.1", port)
        waitFor(lambda: not zombies(proc.pid), 10, what="no zombies")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"in flight")
            os.kill(pid1, signal.SIGTERM)
            waitFor(lambda: not canConnect("127.0.0.1", port), 30, what="stop")
            s.sendall(b" request\n")
            assert s.recv(100) == b"in flight request\n"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
