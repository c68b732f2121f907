"""
Shared by the benchmarks: the servers under comparison, processes, tables.

Every server runs in its own session and temporary directory, with its log there;
L{Running.stop} kills the whole session (every generation), so an interrupted
benchmark leaves nothing listening.

Servers import txflip from the checkout, or, with C{--commit REV} (L{options}), from
a snapshot of that commit (C{git archive}): every new generation imports the code on
disk, so in a checkout others are editing, a snapshot keeps a run on one version.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import twisted
from bench.plain_echo import PLUGIN

# freePort, readPidFile and pidAlive are the benchmarks' too: re-exported ("as").
from tests.harness import freePort as freePort
from tests.harness import readPidFile as readPidFile
from tests.harness import startLogged
from txflip.generation._pidfile import pidAlive as pidAlive

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

HOST = "127.0.0.1"

#: Where the servers import txflip from: the checkout, or a snapshot (L{options}).
CODE = ROOT
_CODE_NAME = "the checkout"


def options(doc: str | None, **defaults: int | float | str) -> argparse.Namespace:
    """
    Parse the benchmark's command line: C{--NAME VALUE} for each of C{defaults}
    (a value of its default's type), and C{--commit REV}: run the servers on a
    snapshot.  C{doc}, the benchmark's docstring: its first line is the help's.
    """
    global CODE, _CODE_NAME
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    for name, default in defaults.items():
        parser.add_argument(f"--{name}", type=type(default), default=default)
    parser.add_argument(
        "--commit", metavar="REV", help="run the servers from a snapshot of REV"
    )
    args = parser.parse_args()
    if args.commit:
        rev = resolve(args.commit)
        target = Path(tempfile.mkdtemp(prefix="txflip-bench-src-"))
        atexit.register(shutil.rmtree, target, ignore_errors=True)
        CODE, _CODE_NAME = snapshot(rev, target), f"commit {rev}"
    return args


class BenchError(Exception):
    """
    A benchmark cannot go on: one line saying why.
    """


def codeName() -> str:
    """Where the servers import txflip from, in words (L{options})."""
    return _CODE_NAME


def resolve(commit: str) -> str:
    """
    The short hash of C{commit} in this checkout (C{commit} itself if unknown).
    """
    result = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", commit],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or commit


def snapshot(commit: str, target: Path) -> Path:
    """
    Extract C{commit} of this checkout into C{target} (which exists): every
    generation of a server run from there imports the same code.
    """
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise BenchError(f"git archive {commit}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def machine() -> str:
    """One line saying where the numbers come from."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({model}),"
        f" Python {platform.python_version()}, Twisted {twisted.__version__}"
    )


def header(title: str, note: str = "") -> None:
    print(f"== {title}")
    print(f"   {machine()}; txflip from {_CODE_NAME}")
    print("   a shared 2-core machine: medians of several runs, and ratios")
    if note:
        print(f"   {note}")
    print()


def raiseNofile(wanted: int) -> int:
    """Raise our open-files limit (children inherit it); the limit we got."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def twistd() -> list[str]:
    found = shutil.which("twistd", path=os.path.dirname(sys.executable))
    if not found:
        raise SystemExit("bench: twistd is not installed next to this Python")
    return [sys.executable, found]


def readLine(sock: socket.socket) -> bytes:
    """
    Read from C{sock} up to the end of a line (an echo's reply).

    @raise ConnectionError: the connection closed before it.
    """
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(100)
        if not chunk:
            raise ConnectionError("closed before the end of the line")
        data += chunk
    return data


def echoOnce(port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout) as s:
            s.sendall(b"ping\n")
            readLine(s)
            return True
    except OSError:  # ConnectionError too
        return False


def httpOnce(port: int, timeout: float = 2.0) -> bool:
    """One GET of the benchmark site's page: does an HTTP server answer 200?"""
    try:
        with socket.create_connection((HOST, port), timeout) as s:
            s.sendall(
                b"GET /index.html HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
            )
            return s.recv(12).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def pin(pid: int, cpu: int) -> None:
    """Keep C{pid} on one CPU (when there are two): less scheduling noise."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(pid, {cpu})


#: With 2 CPUs, servers are pinned to one and load generators to the other.
SERVER_CPU, LOAD_CPU = 1, 0


def runLoad(argv: list[str], seconds: float) -> str:
    """Run a load generator for about C{seconds}, on the load CPU; its output."""
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
        preexec_fn=lambda: pin(0, LOAD_CPU),
    )
    return done.stdout


def waitUntil(what: str, predicate: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.001)


#: Stands for the port in L{listeningServer}'s command.
PORT = "<port>"


def listeningServer(argv: list[str], what: str) -> tuple[subprocess.Popen[bytes], int]:
    """
    Start C{argv}, with L{PORT} in it replaced by a free port on 127.0.0.1
    (txflip from L{CODE}), and wait until it accepts there; the process and the
    port.
    """
    port = freePort()
    argv = [str(port) if a == PORT else a for a in argv]
    proc = subprocess.Popen(argv, env={"PYTHONPATH": str(CODE)})

    def listening() -> bool:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
        except OSError:
            return False
        return True

    try:
        waitUntil(what, listening, 20)
    except BenchError:
        proc.kill()
        proc.wait()
        raise
    return proc, port


@dataclass
class Running:
    """A server under test: its first process, pid file, port and directory."""

    name: str
    proc: subprocess.Popen[bytes]
    pidfile: Path
    port: int
    dir: Path
    ports: tuple[int, ...] = ()

    def serving(self) -> int | None:
        return readPidFile(self.pidfile)

    def log(self) -> str:
        return (self.dir / "server.log").read_text(errors="replace")

    def waitReady(self, timeout: float = 30.0) -> int:
        answers = httpOnce if isWeb(self.name) else echoOnce

        def ready() -> bool:
            pid = self.serving()
            return pid is not None and pidAlive(pid) and answers(self.port)

        try:
            waitUntil(f"{self.name} to serve", ready, timeout)
        except BenchError:
            tail = self.log()[-2000:]
            raise RuntimeError(f"{self.name} did not start:\n{tail}") from None
        pid = self.serving()
        assert pid is not None
        return pid

    def upgrade(self, timeout: float = 30.0) -> tuple[int, float, float]:
        """SIGHUP; (new pid, s to new pid in the pid file, s to old pid gone)."""
        old = self.serving()
        assert old is not None
        started = time.monotonic()
        os.kill(old, signal.SIGHUP)
        new: int | None = None
        toNew = toGone = 0.0
        while True:
            now = time.monotonic()
            if new is None:
                pid = self.serving()
                if pid is not None and pid != old and pidAlive(pid):
                    new, toNew = pid, now - started
            if not toGone and not pidAlive(old):
                toGone = now - started
            if new is not None and toGone:
                return new, toNew, toGone
            if now - started > timeout:
                raise RuntimeError(f"{self.name}: upgrade not done in {timeout} s")
            time.sleep(0.0005)

    def stop(self) -> None:
        pid = self.serving()
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if pid is not None and pidAlive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


#: The resource C{txflip-web-N} serves (C{bench.workers --app}).
WEB_APP = "bench.hello.Hello"

#: The HTTP servers: C{twistd web} serving bench/www, on a plain port, behind
#: C{flip:}, and restarted by a supervisor when SIGHUP kills it.
WEB = ("web", "flipweb", "naiveweb")


def isWeb(name: str) -> bool:
    """Whether server C{name} speaks HTTP (L{WEB}, or C{txflip run} web workers)."""
    return name in WEB or name.startswith("txflip-web-")


def naiveRestart(server: list[str]) -> list[str]:
    """C{server} restarted by a supervisor whenever SIGHUP kills it."""
    naive = ROOT / "tests" / "naive_server.py"
    return [sys.executable, str(naive), "--restart", "--forever", *server]


@functools.cache
def pluginPath() -> str:
    """
    A directory of our own holding C{twisted/plugins/} with the plain echo
    plugin (L{bench.plain_echo.PLUGIN}): on C{PYTHONPATH}, twistd finds it.
    """
    top = Path(tempfile.mkdtemp(prefix="txflip-bench-plugin-"))
    atexit.register(shutil.rmtree, top, ignore_errors=True)
    plugins = top / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "bench_plain_echo.py").write_text(PLUGIN)
    return str(top)


def pythonPath(name: str) -> str:
    """The C{PYTHONPATH} server C{name} runs with: L{CODE}, and its plugin's."""
    if name == "plainplugin":
        return os.pathsep.join([str(CODE), pluginPath()])
    return str(CODE)


def command(
    name: str,
    port: int,
    pidfile: Path,
    listens: Sequence[str] = (),
    options: Sequence[str] = (),
) -> list[str]:
    """How each server under comparison is started (C{options}: flipecho's)."""
    if name in WEB:
        listen = f"tcp:{port}:interface={HOST}"
        plugin = ["web"]
        if name == "flipweb":
            listen, plugin = f"flip:{listen}", ["flip", "web"]
        web = [*twistd(), "-n", "--pidfile", str(pidfile), *plugin, "--listen", listen]
        web += ["--path", str(BENCH / "www")]
        return naiveRestart(web) if name == "naiveweb" else web
    if name == "flipecho":
        endpoints = [f"tcp:{port}:interface={HOST}", *listens]
        args = [a for each in endpoints for a in ("--listen", each)]
        return [
            *twistd(), "-n", "--pidfile", str(pidfile), "flipecho", *args, *options
        ]  # fmt: skip
    if name.startswith(("txflip-run-", "txflip-web-")):
        # txflip run over N flipecho workers, or N workers of bench.hello's tiny
        # twisted.web application (its access log in the server's directory).
        workers = name.rsplit("-", 1)[1]
        run = [sys.executable, "-m", "txflip", "run", "--pidfile", str(pidfile)]
        run += ["--control", str(pidfile.parent / "ctl"), "--workers", workers]
        run += [*options, "--probation", "0", "--"]  # options: txflip run's
        listenArgs = ["--listen", f"tcp:{port}:interface={HOST}"]
        if name.startswith("txflip-run-"):
            return [*run, *twistd(), "-n", "flipecho", *listenArgs]
        web = ["flip", "web", "--listen", f"flip:{listenArgs[1]}"]
        web += ["--class", WEB_APP, "--logfile", "access.log"]
        return [*run, *twistd(), "-n", *web]
    if name == "plain":
        tac = BENCH / "plain_echo.tac"
        return [*twistd(), "-n", "--pidfile", str(pidfile), "-y", str(tac)]
    if name == "plainplugin":  # the same server, found by plugin discovery
        plugin = ["plainecho", "--port", str(port)]
        return [*twistd(), "-n", "--pidfile", str(pidfile), *plugin]
    if name == "naive":
        return naiveRestart(command("plain", port, pidfile))
    if name == "reuseport":
        script = BENCH / "reuseport_echo.py"
        return [sys.executable, str(script), str(port), str(pidfile)]
    if name == "pidecho":
        script = BENCH / "pidecho.py"
        return [sys.executable, str(script), str(port), str(pidfile)]
    raise ValueError(name)


def start(
    name: str,
    listens: Sequence[str] = (),
    env: dict[str, str] | None = None,
    options: Sequence[str] = (),
) -> Running:
    """Start server C{name} on a free port and wait until it echoes."""
    port = freePort()
    directory = Path(tempfile.mkdtemp(prefix=f"txflip-bench-{name}-"))
    pidfile = directory / "server.pid"
    fullEnv = {
        **os.environ,
        "PYTHONPATH": pythonPath(name),
        "BENCH_PORT": str(port),
        **(env or {}),
    }
    argv = command(name, port, pidfile, listens, options)
    proc = startLogged(argv, directory / "server.log", cwd=directory, env=fullEnv)
    server = Running(name, proc, pidfile, port, directory)
    try:
        server.waitReady()
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running(
    name: str,
    listens: Sequence[str] = (),
    env: dict[str, str] | None = None,
    options: Sequence[str] = (),
) -> Iterator[Running]:
    server = start(name, listens, env, options)
    try:
        yield server
    finally:
        server.stop()


def rssKib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def family(pid: int) -> list[int]:
    """
    C{pid} and every process below it (a preloading template's workers are its
    grandchildren): what a service's memory is summed over.
    """
    from txflip.check._pid import childrenOf

    found = [pid]
    for each in found:
        found.extend(sorted(childrenOf(each) - set(found)))
    return found


def pssKib(pid: int) -> int:
    """
    C{pid}'s proportional set size: its shared pages divided among the processes
    sharing them (so a sum over processes counts each page once).
    """
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss for pid {pid}")


def cpuSeconds(pid: int) -> float:
    """User + system CPU time of C{pid} so far."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    fields = stat[stat.rfind(b")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table, first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"
