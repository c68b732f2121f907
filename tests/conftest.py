"""
Fixtures and helpers for end-to-end tests: real twistd processes on 127.0.0.1.
Every helper test modules share lives here or in C{harness.py} (the outside
observer's clients and processes); test modules never import from each other.

The test process makes itself a child subreaper (Linux), so that every generation
of a server -- each the child of the previous one, orphaned when it exits -- becomes
our child: we can collect its exit status and no zombie is left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    Load,
    ServerProcess,
    becomeSubreaper,
    pidAlive,
    readPidFile,
    sessionProcesses,
    waitFor,
    waitForUpgrade,
)

ROOT = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"


SUBREAPER = becomeSubreaper()


def twistdCommand() -> list[str]:
    twistd = shutil.which("twistd", path=os.path.dirname(sys.executable))
    assert twistd, "twistd is not installed next to the test interpreter"
    return [sys.executable, twistd]


def txflipScript() -> str:
    """
    The C{txflip} script installed next to the test interpreter: what a
    supervisor's configuration names (said at once when missing, not as a server
    that never listens).
    """
    txflip = shutil.which("txflip", path=os.path.dirname(sys.executable))
    assert txflip, "the txflip script is not installed next to the test interpreter"
    return txflip


class Flip:
    """
    One flipecho service under test: its first process, pid file, log and port.
    """

    def __init__(self, tmp: Path, argv: list[str], env: dict[str, str] | None) -> None:
        self.dir = tmp
        self.pidfile = tmp / "twistd.pid"
        self.log = tmp / "server.log"
        fullEnv = {"PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = ServerProcess(argv, self.log, cwd=tmp, env=fullEnv)
        self.pids: list[int] = []

    def waitReady(self, timeout: float = 20.0) -> int:
        pid = waitFor(
            lambda: (p := readPidFile(self.pidfile)) and pidAlive(p) and p,
            timeout,
            what=f"a ready server (log: {self.logText()[-2000:]})",
        )
        self.track(pid)
        return pid

    def track(self, pid: int) -> None:
        if pid not in self.pids:
            self.pids.append(pid)
        self.proc.track(pid)

    @property
    def port(self) -> int:
        match = re.search(r"listening on tcp:127\.0\.0\.1:(\d+)", self.logText())
        assert match, self.logText()
        return int(match.group(1))

    def logText(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def serving(self) -> int:
        pid = readPidFile(self.pidfile)
        assert pid is not None
        return pid

    def signal(self, sig: int) -> None:
        os.kill(self.serving(), sig)

    def alive(self) -> list[int]:
        return [pid for pid in self.pids if pidAlive(pid)]


@pytest.fixture
def fault(tmp_path: Path) -> Path:
    """
    The file flipapp reads its fault from (absent: no fault).
    """
    return tmp_path / "fault"


@pytest.fixture
def flip(tmp_path: Path) -> Iterator[object]:
    """
    Start flipecho: C{flip(*args, env=..., app=False, twistd=(...))} -> a ready
    L{Flip}; C{twistd} are twistd's own options (C{--logfile=PATH}: the log read).  Every
    process it starts is killed (by pid) at the end of the test.
    """
    started: list[Flip] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        app: bool = False,
        twistd: tuple[str, ...] = (),
    ) -> Flip:
        if app:
            argv = [sys.executable, str(ROOT / "tests" / "flipapp.py")]
        else:
            argv = twistdCommand()
        argv += ["-n", *twistd, "flipecho", *args]
        if not any(a.startswith("--listen") for a in args):
            argv += ["--listen", "tcp:0:interface=127.0.0.1"]
        server = Flip(tmp_path, argv, env)
        for arg in twistd:
            if arg.startswith("--logfile="):
                # The log is there; stdout gets only what precedes logging.
                server.log = Path(arg.partition("=")[2])
        started.append(server)
        server.track(server.proc.pid)
        server.waitReady()
        return server

    yield start
    for server in started:
        for pid in server.alive():
            os.kill(pid, signal.SIGKILL)
        server.proc.close()
        reapExited(server)


PLAIN = """
import sys
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from txflip.echo import Echo

endpoint = serverFromString(reactor, sys.argv[1])
endpoint.listen(Factory.forProtocol(Echo))
reactor.run()
"""


def selfSigned(directory: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    keyPath, certPath = directory / "key.pem", directory / "cert.pem"
    keyPath.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    certPath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return keyPath, certPath


# --- talking to a service ----------------------------------------------------------


def echo(port: int, line: bytes = b"hello\n", host: str = "127.0.0.1") -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(line)
        return lines(s)


def lines(sock: socket.socket, count: int = 1) -> bytes:
    """
    Read from C{sock} until C{count} whole lines (or the end) have arrived.
    """
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def runTwistd(
    args: list[str], cwd: Path, timeout: float = 30, twistd: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """
    Run twistd (C{twistd}: the command that does, by default L{twistdCommand}) with
    C{args} to its end, txflip from this checkout; its output.
    """
    return subprocess.run(
        [*(twistd or twistdCommand()), *args],
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


# --- following its generations -----------------------------------------------------


def waitLog(server: Flip, text: str, timeout: float = 20.0, count: int = 1) -> str:
    """
    Wait until C{text} is in the server's log C{count} times; return the log.
    """
    try:
        waitFor(lambda: server.logText().count(text) >= count, timeout, what=repr(text))
    except AssertionError as e:
        raise AssertionError(f"{e}; log tail:\n{server.logText()[-3000:]}") from None
    return server.logText()


def waitLine(server: Flip, pid: int, text: str, timeout: float = 20.0) -> str:
    """
    Wait until pid C{pid} has logged a line containing C{text}; return that line.
    """
    line = re.compile(rf"^.*\[pid {pid}\] \[[^\]]*\] .*{re.escape(text)}.*$", re.M)
    try:
        match = waitFor(lambda: line.search(server.logText()), timeout, what=text)
    except AssertionError as e:
        raise AssertionError(
            f"{e} from pid {pid}; log tail:\n{server.logText()[-3000:]}"
        ) from None
    return match.group(0)


def spawned(server: Flip, generation: int) -> int:
    """
    The pid of the latest process started as C{generation} (tracked for cleanup).
    """
    text = waitLog(server, f"started generation {generation} as pid ")
    pid = int(re.findall(rf"started generation {generation} as pid (\d+)", text)[-1])
    server.track(pid)
    return pid


def session(server: Flip) -> list[tuple[int, str]]:
    """
    Every process (pid, state) in the server's session, zombies included: the first
    generation is the session leader and every later generation descends from it.
    """
    return sessionProcesses(server.proc.pid)


def reapExited(server: Flip) -> None:
    """
    Collect the exit status of the generations that are gone: the first is our
    child, later ones became our children (subreaper) when their parent exited.
    """
    server.proc.poll()
    for pid in server.pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def alone(server: Flip, pid: int) -> None:
    """
    C{pid} is the only process left of the service: no stray generation, no zombie.
    """

    def check() -> bool:
        reapExited(server)
        processes = session(server)
        return len(processes) == 1 and processes[0][0] == pid and processes[0][1] != "Z"

    try:
        waitFor(check, 10, what=f"pid {pid} to be the only process")
    except AssertionError as e:
        raise AssertionError(f"{e}; session: {session(server)}") from None


def heldChild(server: Flip, fault: Path, gate: Path) -> tuple[int, int]:
    """
    Upgrade C{server} (a flipapp) to a new generation held before twistd starts
    until C{gate} exists.  Return (the serving pid, the child's).
    """
    pid = server.serving()
    fault.write_text(f"gate:{gate}")
    os.kill(pid, signal.SIGHUP)
    return pid, spawned(server, 2)


def signalStartingChild(
    server: Flip, fault: Path, gate: Path, signum: int
) -> tuple[int, int]:
    """
    Upgrade C{server} (a flipapp) and send C{signum} to the new generation while
    it is held before twistd starts, with no handler yet; then let it go on.
    Return (the serving pid, the child's).
    """
    pid, child = heldChild(server, fault, gate)
    os.kill(child, signum)
    gate.write_text("")
    return pid, child


def upgradeWorks(server: Flip) -> int:
    """
    A normal upgrade succeeds now; return the new pid.
    """
    old = server.serving()
    os.kill(old, signal.SIGHUP)
    new, _, _ = waitForUpgrade(server.pidfile, old, timeout=30)
    server.track(new)
    assert echo(server.port) == b"hello\n"
    return new


def trafficFlows(load: Load, exchanges: int = 20, since: int | None = None) -> None:
    """
    Wait until C{load} has done C{exchanges} more exchanges than now (or than
    C{since}).
    """
    before = load.stats.exchanges if since is None else since
    waitFor(
        lambda: load.stats.exchanges > before + exchanges, 10, what="client traffic"
    )


class PartialRequest:
    """
    A client in the middle of a request (part of a line sent): draining waits for
    it, which keeps an old generation alive until the test finishes the line.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOCALHOST, port), timeout=10)
        self.sock.sendall(b"first\n")
        assert self.sock.recv(100) == b"first\n"
        self.sock.sendall(b"half a li")

    def finish(self) -> bytes:
        """
        Send the rest of the line; return everything up to the server's close.
        """
        self.sock.sendall(b"ne\n")
        data = b""
        while chunk := self.sock.recv(4096):
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def partial() -> Iterator[list[PartialRequest]]:
    made: list[PartialRequest] = []
    yield made
    for each in made:
        each.close()
