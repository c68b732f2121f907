"""
Soak: many consecutive upgrades of flipecho under load, and what they leave behind.

    python -m bench.soak                 # 1,000 upgrades (about 7 minutes here)
    python -m bench.soak --upgrades 50   # the version tests/test_soak.py runs
    python -m bench.soak --commit HEAD   # the code of a commit, not of the checkout

Every new generation imports the code on disk (that is what an upgrade is for): in a
checkout others are editing, use C{--commit}, which runs the server from a snapshot
(C{git archive}) so that every generation runs the same code.

One C{twistd -n flipecho} is started in its own session and temporary directory.
The clients of C{txflip check} (short-lived: connect, one line, close; long-lived:
lock-step lines on one connection) run throughout, while the script sends SIGHUP to
the serving process, waits for the upgrade to complete, and again, N times.  Then it
stops the server with SIGQUIT.  It reports, and fails (exit status 1) unless:

  - the short-lived clients saw no error at all, and no long-lived client lost a
    line (errors of long-lived clients are reported; they can only be lost lines);
  - each generation's open fds, other than its client connections, are as many as
    the previous generation's (first and last printed), and its RSS stays flat
    (last within 10% + 2 MiB of the first of the inherited generations);
  - the pid file always named a live generation (polled every 2 ms), never missing;
  - at most two generations at a time; each exited 0; none left afterwards, no
    zombie, the pid file removed;
  - no traceback and no failed or refused upgrade in the log.

The script is the parent of the first generation and makes itself a child subreaper
(Linux), so every later generation becomes its child when its parent exits: it
collects each exit status, and no zombie is left.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench._common import (
    HOST,
    ROOT,
    BenchError,
    resolve,
    snapshot,
    twistd,
    waitUntil,
)
from tests.harness import becomeSubreaper, reap, sessionProcesses, startLogged
from txflip.check._echoload import Load
from txflip.check._stats import Stats
from txflip.generation._pidfile import PidFile, pidAlive

RSS_SLACK = (1.10, 2048)  # factor, KiB


# --- what a process holds ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sample:
    """
    One generation, sampled once its parent had exited (all alike, so comparable).
    """

    generation: int
    pid: int
    fds: int
    connections: int
    rssKib: int

    @property
    def ownFds(self) -> int:
        """Open fds other than client connections."""
        return self.fds - self.connections


def socketInodes(pid: int) -> set[str]:
    """
    The inodes of the sockets C{pid} holds: before any client connects, those are
    the listening sockets, which every later generation inherits.
    """
    inodes = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target)
    return inodes


def sample(generation: int, pid: int, listening: set[str]) -> Sample:
    targets = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            pass
    # Every other socket is a client connection.
    live = sum(1 for t in targets if t.startswith("socket:[") and t not in listening)
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return Sample(generation, pid, len(targets), live, rss)


# --- watching ---------------------------------------------------------------------


class Watcher(threading.Thread):
    """
    Polls the pid file (every 2 ms) and the session's processes (every 50 ms).
    """

    def __init__(self, pidfile: Path, sid: int) -> None:
        super().__init__(name="soak-watcher", daemon=True)
        self.pidfile = pidfile
        self.sid = sid
        self.problems: list[str] = []
        self.mostProcesses = 0
        self.looks = 0
        self._done = threading.Event()

    def run(self) -> None:
        nextScan = 0.0
        while not self._done.is_set():
            self.looks += 1
            pid = PidFile(str(self.pidfile)).read()
            if pid is None:
                self.problem("the pid file is missing or unreadable")
            elif not pidAlive(pid) and PidFile(str(self.pidfile)).read() == pid:
                self.problem(f"the pid file names pid {pid}, which is gone")
            now = time.monotonic()
            if now >= nextScan:
                nextScan = now + 0.05
                running = [p for p, s in sessionProcesses(self.sid) if s != "Z"]
                self.mostProcesses = max(self.mostProcesses, len(running))
            self._done.wait(0.002)

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(f"{time.strftime('%H:%M:%S')} {text}")

    def stop(self) -> None:
        self._done.set()
        self.join(5)


class LogTail:
    """
    Reads what the server appended to its log since the last look.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.text = ""

    def read(self) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            new = f.read()
        self.offset += len(new)
        self.text += new.decode("utf-8", "replace")
        return self.text

    def waitFor(self, pattern: str, timeout: float) -> re.Match[str]:
        regex = re.compile(pattern, re.M)
        found: list[re.Match[str]] = []

        def look() -> bool:
            match = regex.search(self.read())
            if match:
                found.append(match)
            return bool(match)

        waitUntil(repr(pattern), look, timeout)
        return found[0]

    def forget(self) -> None:
        """Drop what was read (keeps memory flat over a long soak)."""
        self.text = ""


# --- the server -------------------------------------------------------------------


class Generations:
    """
    The first process (our child) and every later generation (our child once its
    parent exits, as we are a subreaper): reaps them and keeps bad exit statuses.
    """

    def __init__(self, first: subprocess.Popen[bytes]) -> None:
        self.first = first
        self.pending: list[int] = []
        self.badExits: list[str] = []
        self.reaped = 0

    def reap(self, pid: int, timeout: float = 10.0) -> None:
        """
        Wait for C{pid} to exit (it is exiting) and keep its status.
        """
        if pid == self.first.pid:
            status: int | None = self.first.wait(timeout)
        else:
            try:
                status = reap(pid, timeout)
            except AssertionError as e:  # timed out
                raise BenchError(str(e)) from None
        self.reaped += 1
        if status not in (0, None):  # None: not ours (no subreaper), not checkable
            self.badExits.append(f"pid {pid} exited with status {status}")


@contextmanager
def flipecho(
    directory: Path, source: Path, extra: list[str]
) -> Iterator[subprocess.Popen[bytes]]:
    """
    Start C{twistd -n flipecho} (txflip from C{source}) in C{directory}, in its own
    session; on the way out, SIGKILL whatever is left of its session.
    """
    argv = [*twistd(), "-n", "flipecho"]
    argv += ["--listen", f"tcp:0:interface={HOST}", *extra]
    env = {**os.environ, "PYTHONPATH": str(source), "PYTHONUNBUFFERED": "1"}
    process = startLogged(argv, directory / "server.log", cwd=directory, env=env)
    try:
        yield process
    finally:
        for pid, _ in sessionProcesses(process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if process.poll() is None:
            process.kill()
            process.wait(10)


# --- the soak ---------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    upgrades: int
    seconds: float
    short: Stats
    long: Stats
    samples: list[Sample]
    upgradeSeconds: list[float]
    pidfileProblems: list[str]
    pidfileLooks: int
    mostProcesses: int
    badExits: list[str]
    leftBehind: list[tuple[int, str]]
    pidfileLeft: bool
    logProblems: list[str]

    @property
    def inherited(self) -> list[Sample]:
        """The samples of generations 2 and later (all started the same way)."""
        return [s for s in self.samples if s.generation > 1] or self.samples

    def failures(self) -> list[str]:
        failed = []
        if self.short.errorsTotal():
            failed.append(f"short-lived clients saw errors: {self.short}")
        if self.long.lost:
            failed.append(f"long-lived clients lost lines: {self.long}")
        own = {s.ownFds for s in self.inherited}
        if len(own) != 1 or self.samples[-1].ownFds > self.samples[0].ownFds:
            counts = [(s.generation, s.ownFds) for s in self.samples]
            failed.append(f"fd counts (other than connections) vary: {counts}")
        first, last = self.inherited[0].rssKib, self.inherited[-1].rssKib
        if last > first * RSS_SLACK[0] + RSS_SLACK[1]:
            failed.append(f"RSS grew from {first} KiB to {last} KiB")
        if self.pidfileProblems:
            failed.append("pid file: " + "; ".join(self.pidfileProblems))
        if self.mostProcesses > 2:
            failed.append(f"{self.mostProcesses} generations at once")
        if self.badExits:
            failed.append("bad exits: " + "; ".join(self.badExits[:10]))
        if self.leftBehind:
            failed.append(f"processes left behind: {self.leftBehind}")
        if self.pidfileLeft:
            failed.append("the pid file was not removed by the final stop")
        failed += self.logProblems
        return failed

    def summary(self) -> str:
        def mib(kib: int) -> str:
            return f"{kib / 1024:.1f} MiB"

        first, last = self.samples[0], self.samples[-1]
        rss = [s.rssKib for s in self.inherited]
        times = sorted(self.upgradeSeconds)
        lines = [
            f"upgrades: {self.upgrades} in {self.seconds:.0f} s"
            f" ({self.seconds / max(self.upgrades, 1):.2f} s each);"
            f" SIGHUP to old generation gone: median"
            f" {statistics.median(times) * 1000:.0f} ms,"
            f" p99 {times[int(len(times) * 0.99) - 1] * 1000:.0f} ms,"
            f" max {times[-1] * 1000:.0f} ms"
            if times
            else f"upgrades: 0 in {self.seconds:.0f} s",
            f"short-lived clients: {self.short}",
            f"long-lived clients: {self.long}",
            f"open fds (first / last generation): {first.fds} / {last.fds},"
            f" of which client connections {first.connections} / {last.connections};"
            f" other fds {first.ownFds} / {last.ownFds}"
            f" (all generations: {sorted({s.ownFds for s in self.samples})})",
            f"RSS (first / last generation): {mib(first.rssKib)} / {mib(last.rssKib)};"
            f" generations 2..{last.generation}: min {mib(min(rss))},"
            f" median {mib(int(statistics.median(rss)))}, max {mib(max(rss))}",
            f"pid file: {self.pidfileLooks} looks,"
            f" {len(self.pidfileProblems)} problems;"
            f" most generations at once: {self.mostProcesses};"
            f" exits not 0: {len(self.badExits)};"
            f" left behind: {len(self.leftBehind)}",
        ]
        failed = self.failures()
        lines.append("FAILED:\n  " + "\n  ".join(failed) if failed else "OK")
        return "\n".join(lines)

    def asJson(self) -> dict[str, object]:
        first, last = self.samples[0], self.samples[-1]
        return {
            "upgrades": self.upgrades,
            "generations_sampled": len(self.samples),
            "seconds": round(self.seconds, 1),
            "short_errors": self.short.errorsTotal(),
            "short_exchanges": self.short.exchanges,
            "long_errors": self.long.errorsTotal(),
            "long_lost": self.long.lost,
            "fds_first": first.fds,
            "fds_last": last.fds,
            "own_fds_first": first.ownFds,
            "own_fds_last": last.ownFds,
            "rss_kib_first": first.rssKib,
            "rss_kib_last": last.rssKib,
            "pidfile_problems": self.pidfileProblems,
            "most_processes": self.mostProcesses,
            "bad_exits": self.badExits,
            "left_behind": self.leftBehind,
            "failures": self.failures(),
        }


def soak(
    upgrades: int,
    *,
    short: int = 4,
    long: int = 2,
    upgradeTimeout: float = 30.0,
    serverArgs: list[str] | None = None,
    commit: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Result:
    """
    Run the soak (with the code of C{commit}, or of the checkout); raise
    L{BenchError} if the server cannot be started or an upgrade does not complete in
    C{upgradeTimeout} seconds.
    """
    becomeSubreaper()
    directory = Path(tempfile.mkdtemp(prefix="txflip-soak-"))
    pidfile = directory / "twistd.pid"
    try:
        source = ROOT
        if commit:
            source = directory / "src"
            source.mkdir()
            snapshot(commit, source)
        with flipecho(directory, source, serverArgs or []) as first:
            return _soak(
                first,
                directory,
                pidfile,
                upgrades,
                short,
                long,
                upgradeTimeout,
                progress,
            )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _soak(
    first: subprocess.Popen[bytes],
    directory: Path,
    pidfile: Path,
    upgrades: int,
    short: int,
    long: int,
    upgradeTimeout: float,
    progress: Callable[[str], None] | None,
) -> Result:
    log = LogTail(directory / "server.log")
    generations = Generations(first)
    log.waitFor(rf"\[pid {first.pid}\] .*generation 1 ready", 30)
    port = int(log.waitFor(r"listening on tcp:127\.0\.0\.1:(\d+)", 5).group(1))
    listening = socketInodes(first.pid)
    samples = [sample(1, first.pid, listening)]
    times: list[float] = []
    problems: list[str] = []
    watcher = Watcher(pidfile, first.pid)
    watcher.start()
    started = time.monotonic()
    load = Load(HOST, port, short, long)
    load.start()
    try:
        waitUntil("the load to flow", lambda: load.stats.exchanges > 50, 10)
        serving = first.pid
        for generation in range(2, upgrades + 2):
            log.forget()
            hup = time.monotonic()
            os.kill(serving, signal.SIGHUP)
            new: list[int] = []

            def handedOver(old: int = serving, found: list[int] = new) -> bool:
                pid = PidFile(str(pidfile)).read()
                if pid is not None and pid != old and not found:
                    found.append(pid)
                return bool(found) and not pidAlive(old)

            waitUntil(f"upgrade to generation {generation}", handedOver, upgradeTimeout)
            times.append(time.monotonic() - hup)
            generations.reap(serving)
            serving = new[0]
            # Sampled once the new generation knows its parent is gone (its parent
            # pipe closed), so that every sample is taken in the same state.
            log.waitFor(
                rf"\[pid {serving}\] .*previous generation exited", upgradeTimeout
            )
            samples.append(sample(generation, serving, listening))
            if progress is not None and (generation - 1) % 50 == 0:
                progress(
                    f"{generation - 1} upgrades, {time.monotonic() - started:.0f} s,"
                    f" fds {samples[-1].ownFds}+{samples[-1].connections},"
                    f" RSS {samples[-1].rssKib} KiB, errors"
                    f" {load.shortStats.errorsTotal()}/{load.longStats.errorsTotal()}"
                )
    finally:
        load.stop()
        watcher.stop()
    seconds = time.monotonic() - started
    os.kill(serving, signal.SIGQUIT)
    generations.reap(serving, 30)
    waitUntil("the session to end", lambda: not sessionProcesses(first.pid), 10)
    text = (directory / "server.log").read_text(errors="replace")
    for bad in ("Traceback", "Unhandled", "upgrade failed", "upgrade refused"):
        if bad in text:
            problems.append(f"the log says {bad!r}")
    return Result(
        upgrades,
        seconds,
        load.shortStats,
        load.longStats,
        samples,
        times,
        watcher.problems,
        watcher.looks,
        watcher.mostProcesses,
        generations.badExits,
        sessionProcesses(first.pid),
        pidfile.exists(),
        problems,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--upgrades", type=int, default=1000)
    parser.add_argument("--short-clients", type=int, default=4)
    parser.add_argument("--long-clients", type=int, default=2)
    parser.add_argument(
        "--commit", metavar="REV", help="run the server from a snapshot of REV"
    )
    parser.add_argument("--json", action="store_true", help="print JSON too")
    args = parser.parse_args(argv)
    commit = resolve(args.commit) if args.commit else None
    print(
        f"soak: {args.upgrades} upgrades of flipecho, {args.short_clients} short-lived"
        f" and {args.long_clients} long-lived clients; code: "
        + (f"commit {commit}" if commit else f"the checkout {ROOT}"),
        flush=True,
    )
    try:
        result = soak(
            args.upgrades,
            short=args.short_clients,
            long=args.long_clients,
            commit=commit,
            progress=lambda line: print(f"  {line}", flush=True),
        )
    except BenchError as e:
        print(f"soak: {e}", file=sys.stderr)
        return 1
    print(result.summary())
    if args.json:
        print(json.dumps(result.asJson()))
    return 1 if result.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
