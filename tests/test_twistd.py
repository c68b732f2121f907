"""
End to end: flipecho under twistd's own options -- pid files, log files,
daemonizing -- and the one-line errors of a bad start.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, SUBREAPER, echo, oneLineError, runTwistd, twistdCommand
from tests.harness import (
    ServerProcess,
    found,
    freePort,
    pidAlive,
    readPidFile,
    reap,
    waitFor,
    waitForUpgrade,
)

TCP0 = "tcp:0:interface=127.0.0.1"
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[pid \d+\] \[")


@pytest.mark.slow
def test_daemonizedWithLogfileAndPidfile(tmp_path: Path) -> None:
    """
    Without -n the first generation daemonizes; later ones must not daemonize again.
    All generations append to one --logfile without overwriting each other, and the
    --pidfile always names the serving process.
    """
    pidfile = tmp_path / "run" / "echo.pid"
    pidfile.parent.mkdir()
    logfile = tmp_path / "echo.log"
    started = runTwistd(
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
        pid = waitFor(lambda: readPidFile(pidfile), 20, what="the daemon's pid")
        pids.append(pid)
        waitFor(lambda: "ready" in logfile.read_text(), 20, what="ready")
        port = int(found(r"tcp:127\.0\.0\.1:(\d+)", logfile.read_text()))
        assert echo(port) == b"hello\n"
        for _ in range(3):
            old = pids[-1]
            os.kill(old, signal.SIGHUP)
            new, _, _ = waitForUpgrade(pidfile, old, timeout=30)
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
        waitFor(lambda: not pidAlive(pids[-1]), 30, what="the final exit")
        assert not pidfile.exists()
    finally:
        for pid in pids:
            if pidAlive(pid):
                os.kill(pid, signal.SIGKILL)


def test_secondServerOnSamePidfileIsRefused(flip, tmp_path: Path) -> None:
    server = flip()
    result = runTwistd(
        ["-n", "flipecho", "--listen", "tcp:0:interface=127.0.0.1"], tmp_path
    )
    line = oneLineError(result)
    assert f"another server is running, PID {server.serving()}" in line
    assert readPidFile(server.pidfile) == server.serving()


def test_portInUseIsOneLine(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runTwistd(
            ["-n", "flipecho", "--listen", f"tcp:{port}:interface=127.0.0.1"], tmp_path
        )
    line = oneLineError(result)
    assert line.endswith(
        f"cannot listen on tcp:127.0.0.1:{port}: address already in use"
    )
    assert not (tmp_path / "twistd.pid").exists()


def test_unixPathThatIsAFileIsOneLine(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("precious")
    result = runTwistd(["-n", "flipecho", "--listen", f"unix:{path}"], tmp_path)
    line = oneLineError(result)
    assert "the path exists and is not a socket" in line
    assert path.read_text() == "precious"


def test_unwritablePidfileIsOneLine(tmp_path: Path) -> None:
    result = runTwistd(
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


def test_badListenDescription(tmp_path: Path) -> None:
    result = runTwistd(["-n", "flipecho", "--listen", "tcp:http"], tmp_path)
    assert result.returncode != 0
    assert "port='http' is not a number" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_malformedHandoffIsOneLine(tmp_path: Path) -> None:
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


def test_udpAndTcp6AcrossUpgrade(flip) -> None:
    server = flip(
        "--listen",
        "udp:0:interface=127.0.0.1",
        "--listen",
        "tcp6:0:interface=\\:\\:1",
        "--listen",
        "tcp:0:interface=127.0.0.1",
    )
    text = server.logText()
    udpPort = int(found(r"udp:127\.0\.0\.1:(\d+)", text))
    tcp6Port = int(found(r"tcp6:\[::1\]:(\d+)", text))

    def udpEcho() -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(b"datagram", ("127.0.0.1", udpPort))
            return s.recvfrom(100)[0]

    assert udpEcho() == b"datagram"
    assert echo(tcp6Port, host="::1") == b"hello\n"
    old = server.serving()
    os.kill(old, signal.SIGHUP)
    new, _, _ = waitForUpgrade(server.pidfile, old, timeout=30)
    server.track(new)
    assert udpEcho() == b"datagram"
    assert echo(tcp6Port, host="::1") == b"hello\n"


def test_realNetcatClient(flip) -> None:
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
    while pidAlive(old) or readPidFile(server.pidfile) == old:
        assert ncEcho() == "hello\n"
    server.track(readPidFile(server.pidfile))
    assert ncEcho() == "hello\n"


def test_everyGenerationHasTheSameProcessName(tmp_path: Path) -> None:
    """
    Started as a script (C{twistd ...}, through its #! line), every generation is
    named C{twistd} in ps and pgrep -x, not after the interpreter.
    """
    script = twistdCommand()[1]
    argv = [script, "-n", "flipecho", "--listen", "tcp:0:interface=127.0.0.1"]
    pidfile = tmp_path / "twistd.pid"

    def name(pid: int) -> str:
        return Path(f"/proc/{pid}/comm").read_text().strip()

    with ServerProcess(
        argv, tmp_path / "log", cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}
    ) as proc:
        first = waitFor(lambda: readPidFile(pidfile), 20, what="ready")
        assert name(first) == "twistd"
        pids = [first]
        for _ in range(2):
            os.kill(pids[-1], signal.SIGHUP)
            new, _, _ = waitForUpgrade(pidfile, pids[-1], timeout=30)
            proc.track(new)
            pids.append(new)
            assert name(new) == "twistd"
            assert Path(f"/proc/{new}/cmdline").read_bytes().split(b"\0")[2:4] == [
                b"-n",
                b"flipecho",
            ]
        os.kill(pids[-1], signal.SIGQUIT)
        waitFor(lambda: not pidAlive(pids[-1]), 30, what="the final exit")


FLIPWEB = ["flip", "web", "--listen", "flip:tcp:0:interface=127.0.0.1", "--path", "."]


@pytest.mark.parametrize(
    "args",
    [
        ["-n", "flipecho"],
        ["--pidfile=echo.pid", "flipecho"],
        ["-n", *FLIPWEB],
        ["--pidfile=web.pid", *FLIPWEB],
    ],
    ids=["foreground", "daemon", "flip-web", "flip-web-daemon"],
)
def test_missingLogfileDirectoryIsOneLine(tmp_path: Path, args: list[str]) -> None:
    result = runTwistd([f"--logfile={tmp_path}/missing/dir/x.log", *args], tmp_path)
    line = oneLineError(result)
    assert line == (
        f"txflip: cannot open log file {tmp_path}/missing/dir/x.log: No such file"
        " or directory"
    )


@pytest.mark.parametrize("plugin", [["flip", "web"], ["web"]])
def test_flipWithoutColonIsOneLine(tmp_path: Path, plugin: list[str]) -> None:
    result = runTwistd(["-n", *plugin, "--listen", "flip", "--path", "."], tmp_path)
    assert "bad listen description 'flip': what should it wrap?" in oneLineError(result)


def test_unescapedIpv6InterfaceSaysToEscapeAndQuote(tmp_path: Path) -> None:
    result = runTwistd(["-n", "flipecho", "--listen", "tcp6:0:interface=::1"], tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "escape the colons of an IPv6 interface (interface=\\:\\:1)" in output
    assert "--listen 'tcp6:PORT:interface=\\:\\:1'" in output
    assert "unexpected" not in output and "Traceback" not in output


def test_pidfileUnderAFileSaysSo(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    result = runTwistd(
        ["-n", f"--pidfile={tmp_path}/afile/x.pid", "flipecho", "--listen", TCP0],
        tmp_path,
    )
    assert oneLineError(result) == (
        f"txflip: cannot write pid file {tmp_path}/afile/x.pid: {tmp_path}/afile is"
        " a file, not a directory"
    )


TLS = "flip:ssl:0:interface=127.0.0.1:privateKey=k.pem"


def test_sslWithoutPyopensslIsOneLine(tmp_path: Path) -> None:
    """
    Without pyOpenSSL (simulated: it cannot be imported), flip:ssl: says what to
    install.
    """
    code = (
        "import sys\n"
        "sys.modules['OpenSSL'] = None\n"
        "from twisted.scripts.twistd import run\n"
        "sys.argv = ['twistd', *sys.argv[1:]]\n"
        "run()\n"
    )
    args = ["-n", "flip", "web", "--listen", TLS, "--path", "."]
    result = runTwistd(args, tmp_path, twistd=[sys.executable, "-c", code])
    line = oneLineError(result)
    assert "TLS needs pyOpenSSL: pip install 'twisted[tls]'" in line


def test_unreplaceablePidfileIsFoundBeforeBinding() -> None:
    """
    A server that may not replace another user's pid file in a sticky directory
    (as root, without CAP_FOWNER: what a non-root user is): one line, and nothing
    was bound.
    """
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip(
            "needs root and setpriv: to own the files, then drop CAP_FOWNER"
            " (run the suite as root, as CI does)"
        )
    directory = Path(tempfile.mkdtemp(prefix="txflip-sticky-"))
    try:
        directory.chmod(0o1777)
        os.chown(directory, 12346, 12346)
        pidfile = directory / "twistd.pid"
        pidfile.write_text("999999\n")
        os.chown(pidfile, 12345, 12345)
        port = freePort()
        drop = "-fowner"
        argv = [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}"]
        argv += [*twistdCommand(), "-n", f"--pidfile={pidfile}", "flipecho"]
        argv += ["--listen", f"tcp:{port}:interface=127.0.0.1"]
        result = subprocess.run(
            argv,
            cwd=directory,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert oneLineError(result) == (
            f"txflip: cannot write pid file {pidfile}: it belongs to uid 12345 and"
            f" {directory} is sticky (only the file's owner may replace it); remove"
            " it, or use another --pidfile"
        )
        assert "listening" not in result.stdout + result.stderr
        assert pidfile.read_text() == "999999\n"
    finally:
        shutil.rmtree(directory)
