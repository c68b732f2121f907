"""
End to end: flipecho under twistd's own options -- pid files, log files,
daemonizing -- and the one-line errors of a bad start.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

from conftest import ROOT, SUBREAPER, reap, twistdCommand
from harness import pid_alive, read_pidfile, wait_for, wait_for_upgrade
from test_flipecho import echo

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[pid \d+\] \[")


def run(
    args: list[str], cwd: Path, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*twistdCommand(), *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def oneLineError(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def test_daemonized_with_logfile_and_pidfile(tmp_path: Path) -> None:
    """
    Without -n the first generation daemonizes; later ones must not daemonize again.
    All generations append to one --logfile without overwriting each other, and the
    --pidfile always names the serving process.
    """
    pidfile = tmp_path / "run" / "echo.pid"
    pidfile.parent.mkdir()
    logfile = tmp_path / "echo.log"
    started = run(
        [
            f"--pidfile={pidfile}",
            f"--logfile={logfile}",
            "flipecho",
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ],
        tmp_path,
    )
    assert started.returncode == 0, started
    pids: list[int] = []
    try:
        pid = wait_for(lambda: read_pidfile(pidfile), 20, what="the daemon's pid")
        pids.append(pid)
        wait_for(lambda: "ready" in logfile.read_text(), 20, what="ready")
        port = int(re.search(r"tcp:127\.0\.0\.1:(\d+)", logfile.read_text()).group(1))
        assert echo(port) == b"hello\n"
        for _ in range(3):
            old = pids[-1]
            os.kill(old, signal.SIGHUP)
            new, _, _ = wait_for_upgrade(pidfile, old, timeout=30)
            pids.append(new)
            assert echo(port) == b"hello\n"
        text = logfile.read_text()
        for line in text.splitlines():
            assert LINE.match(line), f"damaged log line: {line!r}"
        for generation, pid in enumerate(pids, start=1):
            assert f"[pid {pid}]" in text
            assert f"generation {generation} ready (pid {pid})" in text
        os.kill(pids[-1], signal.SIGQUIT)
        if SUBREAPER:
            assert reap(pids[-1], 30) == 0
        wait_for(lambda: not pid_alive(pids[-1]), 30, what="the final exit")
        assert not pidfile.exists()
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_second_server_on_same_pidfile_is_refused(flip, tmp_path: Path) -> None:
    server = flip()
    result = run(["-n", "flipecho", "--listen", "tcp:0:interface=127.0.0.1"], tmp_path)
    line = oneLineError(result)
    assert f"another server is running, PID {server.serving()}" in line
    assert read_pidfile(server.pidfile) == server.serving()


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            ["-n", "flipecho", "--listen", f"tcp:{port}:interface=127.0.0.1"], tmp_path
        )
    line = oneLineError(result)
    assert line.endswith(
        f"cannot listen on tcp:127.0.0.1:{port}: address already in use"
    )
    assert not (tmp_path / "twistd.pid").exists()


def test_unix_path_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("precious")
    result = run(["-n", "flipecho", "--listen", f"unix:{path}"], tmp_path)
    line = oneLineError(result)
    assert "the path exists and is not a socket" in line
    assert path.read_text() == "precious"


def test_unwritable_pidfile_is_one_line(tmp_path: Path) -> None:
    result = run(
        [
            "-n",
            f"--pidfile={tmp_path}/missing/dir/x.pid",
            "flipecho",
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ],
        tmp_path,
    )
    assert "cannot write pid file" in oneLineError(result)


def test_bad_listen_description(tmp_path: Path) -> None:
    result = run(["-n", "flipecho", "--listen", "tcp:http"], tmp_path)
    assert result.returncode != 0
    assert "port='http' is not a number" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_malformed_handoff_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TXFLIP_HANDOFF": "{not json"}
    result = subprocess.run(
        [*twistdCommand(), "-n", "flipecho", "--listen", "tcp:0:interface=127.0.0.1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "malformed handoff table: not JSON" in oneLineError(result)


def test_udp_and_tcp6_across_upgrade(flip) -> None:
    server = flip(
        "--listen",
        "udp:0:interface=127.0.0.1",
        "--listen",
        "tcp6:0:interface=\\:\\:1",
        "--listen",
        "tcp:0:interface=127.0.0.1",
    )
    text = server.logText()
    udpPort = int(re.search(r"udp:127\.0\.0\.1:(\d+)", text).group(1))
    tcp6Port = int(re.search(r"tcp6:\[::1\]:(\d+)", text).group(1))

    def udpEcho() -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(b"datagram", ("127.0.0.1", udpPort))
            return s.recvfrom(100)[0]

    assert udpEcho() == b"datagram"
    assert echo(tcp6Port, host="::1") == b"hello\n"
    old = server.serving()
    os.kill(old, signal.SIGHUP)
    new, _, _ = wait_for_upgrade(server.pidfile, old, timeout=30)
    server.track(new)
    assert udpEcho() == b"datagram"
    assert echo(tcp6Port, host="::1") == b"hello\n"


def test_real_netcat_client(flip) -> None:
    """
    The README's client loop with Debian's netcat-openbsd, through an upgrade.
    """
    nc = "/usr/bin/nc" if os.path.exists("/usr/bin/nc") else None
    if nc is None:
        import pytest

        pytest.skip("netcat is not installed (.ci/run installs netcat-openbsd)")
    server = flip()
    port = server.port
    flavour = subprocess.run([nc, "-h"], capture_output=True, text=True)
    closeFlag = ["-N"] if "-N" in flavour.stdout + flavour.stderr else ["-q", "1"]

    def ncEcho() -> str:
        return subprocess.run(
            [nc, *closeFlag, "127.0.0.1", str(port)],
            input="hello\n",
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout

    assert ncEcho() == "hello\n"
    old = server.serving()
    os.kill(old, signal.SIGHUP)
    while pid_alive(old) or read_pidfile(server.pidfile) == old:
        assert ncEcho() == "hello\n"
    server.track(read_pidfile(server.pidfile))
    assert ncEcho() == "hello\n"
