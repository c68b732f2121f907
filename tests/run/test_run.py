"""
C{txflip run}: a supervisor whose PID never changes, over real flipecho workers.
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
from typing import Any

import pytest

from tests.conftest import ROOT, twistdCommand
from tests.harness import (
    Load,
    allGone,
    freePort,
    killedAtEnd,
    oneLine,
    pidAlive,
    readPidFile,
    sessionProcesses,
    waitFor,
)
from tests.harness import (
    txflipCheck as check,
)
from tests.supervised import Supervised, flipecho, pidFileStays, txflip

# A worker command that fails when the file "broken" exists in its directory (a bad
# deploy), and one whose worker dies 1.5 s after it started when "dies" exists
# (passing SIGQUIT on to the server meanwhile).
BAD_DEPLOY = 'if [ -e broken ]; then echo "bad deploy" >&2; exit 3; fi; exec "$@"'
DIES = (
    "if [ -e dies ]; then trap 'kill -QUIT $! 2>/dev/null' QUIT;"
    ' "$@" & sleep 1.5; kill -9 $!; wait; exit 7; fi; exec "$@"'
)


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Any]:
    started: list[Supervised] = []

    def start(
        command: list[str], *options: str, wait: bool = True, errors: bool = False
    ) -> Supervised:
        run = Supervised(tmp_path, command, *options, errors=errors)
        started.append(run)
        if wait:
            run.waitReady()
        return run

    start.tmp = tmp_path  # type: ignore[attr-defined]
    start.started = started  # type: ignore[attr-defined]
    yield start
    for run in started:
        run.close()


def echo(port: int, line: bytes = b"hello\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(line)
        return s.recv(100)


@pytest.mark.slow
def test_upgradesKeepThePidUnderLoad(supervised: Any) -> None:
    """
    Ten upgrades of two workers under short and long clients: every one exits 0
    with two new pids, no client sees an error or loses a line, and the pid file
    names the supervisor throughout.
    """
    run = supervised(flipecho(), "--workers", "2", "--probation", "0")
    pids = run.waitReady()
    assert run.pid not in pids and pidFileStays(run)
    with Load("127.0.0.1", run.port, short=4, long=4) as load:
        for _ in range(10):
            result = run.upgrade()
            assert result.returncode == 0, result.stderr + run.tail()
            new = [int(p) for p in result.stdout.split()]
            assert len(new) == 2 and not set(new) & set(pids)
            for pid in new:
                run.track(pid)
            assert pidFileStays(run)
            waitFor(allGone(*pids), 30, what="old")
            pids = new
        short, long = load.shortStats.exchanges, load.longStats.exchanges
        waitFor(
            lambda: (
                load.shortStats.exchanges > short + 20
                and load.longStats.exchanges > long + 20
            ),
            10,
            what="traffic after the last upgrade",
        )
    stats = load.stats
    assert stats.errorsTotal() == 0 and stats.lost == 0, stats
    assert load.shortStats.exchanges > 100 and load.longStats.exchanges > 100
    assert pidFileStays(run)
    assert run.status()["generation"] == 11
    assert not (run.dir / "twistd.pid").exists()


@pytest.mark.slow
def test_twoWorkersEachServeAShare(supervised: Any) -> None:
    run = supervised(flipecho(), "--workers", "2")
    first, second = run.waitReady()
    clients = []
    try:
        for _ in range(60):
            s = socket.create_connection(("127.0.0.1", run.port), timeout=5)
            s.sendall(b"x\n")
            assert s.recv(10) == b"x\n"
            clients.append(s)
        counts = {w["pid"]: w["connections"] for w in run.status()["workers"]}
    finally:
        for s in clients:
            s.close()
    assert sum(counts.values()) == 60, counts
    assert counts[first] > 0 and counts[second] > 0, counts


def holdConnections(port: int, count: int) -> list[socket.socket]:
    """
    C{count} long-lived connections, opened one after another, each answered.
    """
    clients = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            clients.append(s)
            s.sendall(b"x\n")
            assert s.recv(10) == b"x\n"
    except BaseException:
        for s in clients:
            s.close()
        raise
    return clients


def connectAtOnce(port: int, count: int) -> list[socket.socket]:
    """
    C{count} long-lived connections opened all at once (clients reconnecting
    together), then each answered.
    """
    clients = [socket.socket() for _ in range(count)]
    try:
        for s in clients:
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
        for s in clients:
            s.setblocking(True)
            s.settimeout(5)
            s.sendall(b"x\n")
        assert all(s.recv(10) == b"x\n" for s in clients)
    except BaseException:
        for s in clients:
            s.close()
        raise
    return clients


@pytest.mark.slow
def test_twoWorkersShareLongLivedConnections(supervised: Any) -> None:
    """
    Long-lived connections are spread across 2 workers, whether 100 clients
    connect at once (without balancing, one worker's wakeup took 75 or 99 of
    them) or another 100 connect one after another (one held 193 of 200).
    """
    run = supervised(flipecho(), "--workers", "2")
    pids = run.waitReady()
    clients = connectAtOnce(run.port, 100)
    try:
        atOnce = {w["pid"]: w["connections"] for w in run.status()["workers"]}
        clients += holdConnections(run.port, 100)
        counts = {w["pid"]: w["connections"] for w in run.status()["workers"]}
    finally:
        for s in clients:
            s.close()
    assert sorted(counts) == sorted(pids) and sum(counts.values()) == 200, counts
    assert min(atOnce.values()) >= 40 and min(counts.values()) >= 90, (atOnce, counts)


@pytest.mark.slow
def test_balancingSurvivesUpgradesAndACrash(supervised: Any) -> None:
    """
    After two upgrades and a worker killed (its replacement in a reused slot of
    the table), a burst is still spread across both workers.
    """
    run = supervised(flipecho(), "--workers", "2", "--probation", "0")
    old = run.waitReady()
    for _ in range(2):
        assert run.upgrade().returncode == 0
    killed = waitFor(lambda: [p for p in run.ready() if p not in old], 30)[0]
    os.kill(killed, signal.SIGKILL)

    def replaced() -> list[int]:
        ready = run.ready()
        return ready if killed not in ready else []

    pids = waitFor(replaced, 30, what="a replacement")
    clients = connectAtOnce(run.port, 100)
    try:
        counts = {w["pid"]: w["connections"] for w in run.status()["workers"]}
    finally:
        for s in clients:
            s.close()
    assert sorted(counts) == sorted(pids) and min(counts.values()) >= 40, counts


@pytest.mark.slow
def test_aHungWorkerDoesNotStopTheOthersAccepting(supervised: Any) -> None:
    """
    A worker stopped dead (SIGSTOP: its slot still says it holds few) is no
    reason for the other to keep pausing once its heartbeat is stale: every
    new connection is answered, by the other worker.
    """
    run = supervised(flipecho(), "--workers", "2")
    hung, other = run.waitReady()
    clients = holdConnections(run.port, 10)
    os.kill(hung, signal.SIGSTOP)
    try:
        clients += holdConnections(run.port, 20)
        counts = {w["pid"]: w["connections"] for w in run.status()["workers"]}
    finally:
        os.kill(hung, signal.SIGCONT)
        for s in clients:
            s.close()
    assert counts[other] >= 20, counts


@pytest.mark.slow
def test_aWorkerAddedByTtinTakesTheNewConnections(supervised: Any) -> None:
    run = supervised(flipecho(), "--workers", "1")
    (old,) = run.waitReady()
    clients = holdConnections(run.port, 20)
    try:
        run.signal(signal.SIGTTIN)
        (new,) = waitFor(
            lambda: [p for p in run.ready() if p != old], 30, what="a second worker"
        )
        clients += holdConnections(run.port, 20)
        counts = {w["pid"]: w["connections"] for w in run.status()["workers"]}
    finally:
        for s in clients:
            s.close()
    assert counts[new] >= 15 and counts[old] + counts[new] == 40, counts


@pytest.mark.slow
def test_killedWorkerIsReplacedAndNothingIsRefused(supervised: Any) -> None:
    run = supervised(flipecho(), "--workers", "1")
    (pid,) = run.waitReady()
    with Load("127.0.0.1", run.port, short=4, long=0) as load:
        waitFor(lambda: load.shortStats.exchanges > 20, 10, what="load")
        os.kill(pid, signal.SIGKILL)
        (new,) = waitFor(
            lambda: [p for p in run.ready() if p != pid], 30, what="a replacement"
        )
        before = load.shortStats.exchanges
        waitFor(lambda: load.shortStats.exchanges > before + 50, 10, what="load")
    assert new != pid and pidFileStays(run)
    assert load.stats.count("refused") == 0, load.stats
    assert "was killed by SIGKILL after ready; replacing it" in run.logText()


@pytest.mark.slow
def test_badDeployLeavesTheOldWorkersServing(supervised: Any) -> None:
    run = supervised(["sh", "-c", BAD_DEPLOY, "sh", *flipecho()], "--workers", "2")
    old = run.waitReady()
    (run.dir / "broken").touch()
    result = run.upgrade()
    assert result.returncode == 1
    assert "exited with status 3 before it was ready" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
    assert sorted(run.waitReady()) == sorted(old)
    assert echo(run.port) == b"hello\n"
    assert run.status()["lastUpgrade"]["result"].startswith("failed: child pid=")


def test_aFailedUpgradeSaysWhatTheWorkerWroteOnStderr(supervised: Any) -> None:
    """
    C{txflip upgrade --control}'s one line ends with the last lines the failed
    worker wrote on stderr (what systemd's and Ansible's users need), bounded;
    and those lines still reach the supervisor's own output, as before.
    """
    noisy = 'if [ -e broken ]; then seq 1 50 >&2; echo "bad deploy" >&2; exit 3; fi'
    run = supervised(["sh", "-c", f'{noisy}; exec "$@"', "sh", *flipecho()])
    old = run.waitReady()
    (run.dir / "broken").touch()
    result = run.upgrade()
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "exited with status 3 before it was ready" in result.stderr
    assert result.stderr.rstrip().endswith("| 48 | 49 | 50 | bad deploy"), result.stderr
    assert " 40 |" not in result.stderr  # bounded: the last few lines only
    assert len(result.stderr) < 1000
    log = run.logText()
    assert "\n1\n2\n" in log and "\nbad deploy\n" in log, run.tail()
    assert run.waitReady() == old
    assert "bad deploy" in run.status()["lastUpgrade"]["result"]


def test_upgradeByPidFileRefusesASupervisorAtOnce(supervised: Any) -> None:
    """
    A supervisor's pid never changes, so C{txflip upgrade --pid-file} could only
    time out: it says at once to use C{--control}, and signals nothing.
    """
    run = supervised(flipecho())
    old = run.waitReady()
    result = txflip("upgrade", "--pid-file", str(run.pidfile), "--timeout", "20")
    assert result.returncode == 1
    assert result.stderr == (
        f"txflip upgrade: pid {run.pid} from {run.pidfile} is a txflip run"
        " supervisor, whose pid never changes: upgrade it with --control and its"
        " control socket (or kill -HUP it and read its log)\n"
    ), result.stderr
    assert run.waitReady() == old
    assert "SIGHUP" not in run.logText()


@pytest.mark.slow
def test_txflipCheckThroughTheControlSocketFollowsTheWorkers(supervised: Any) -> None:
    """
    C{txflip check --control} against C{txflip run}: the pid the control socket
    names is the supervisor's, which never exits, so the check follows the ready
    workers and counts an upgrade complete once every old one is gone.
    """
    run = supervised(flipecho(), "--workers", "2", "--probation", "0")
    old = run.waitReady()
    status, report, stderr = check(
        "--port", str(run.port), "--control", str(run.control),
        "--short-clients", "2", "--long-clients", "2",
        "--duration", "3", "--upgrades", "1", "--upgrade-timeout", "20",
    )  # fmt: skip
    new = run.waitReady()
    assert status == 0, (report["failures"], stderr)
    (upgrade,) = report["upgrades"]
    assert upgrade["old_pid"] in old and upgrade["new_pid"] in new
    assert 0 < upgrade["to_new_s"] <= upgrade["to_old_gone_s"]
    assert allGone(*old)() and pidFileStays(run)


@pytest.mark.slow
def test_aWorkerDyingOnProbationRollsBack(supervised: Any) -> None:
    run = supervised(
        ["sh", "-c", DIES, "sh", *flipecho()], "--workers", "2", "--probation", "5"
    )
    old = run.waitReady()
    (run.dir / "dies").touch()
    with Load("127.0.0.1", run.port, short=2, long=2) as load:
        result = run.upgrade()
    assert result.returncode == 1
    assert "rolled back: worker pid" in result.stderr, result.stderr
    assert "exited with status 7 after ready" in result.stderr
    assert sorted(run.waitReady()) == sorted(old)
    assert load.stats.count("refused") == 0, load.stats
    assert echo(run.port) == b"hello\n"


@pytest.mark.slow
def test_humanStatusOfTheSupervisor(supervised: Any) -> None:
    run = supervised(flipecho(), "--workers", "2")
    pids = run.waitReady()
    human = txflip("status", "--control", str(run.control))
    assert human.returncode == 0, human.stderr
    assert f"pid          {run.pid}\n" in human.stdout
    assert "started by   a first start at " in human.stdout, human.stdout
    assert "unknown" not in human.stdout
    for pid in pids:
        assert f"{pid:>10}           1  ready" in human.stdout, human.stdout


@pytest.mark.slow
def test_sigintStopsGracefully(supervised: Any) -> None:
    run = supervised(flipecho(), "--workers", "2")
    pids = run.waitReady()
    run.signal(signal.SIGINT)
    assert run.proc.waitExit(30) == 0
    assert not any(map(pidAlive, pids))
    assert not run.pidfile.exists() and not run.control.exists()
    assert "txflip run: stopping 2 workers" in run.logText()
    assert "is gone: stopping" not in run.logText()  # it was not gone


@pytest.mark.slow
def test_ttinTtouChangeTheNumberOfWorkers(supervised: Any) -> None:
    run = supervised(flipecho(), "--workers", "1")
    run.waitReady()
    run.signal(signal.SIGTTIN)
    waitFor(lambda: len(run.ready()) == 2, 30, what="two workers")
    run.signal(signal.SIGTTOU)
    waitFor(lambda: len(run.ready()) == 1, 30, what="one worker")
    run.signal(signal.SIGTTOU)  # never fewer than one
    waitFor(
        lambda: "txflip run: staying at 1 workers (1 to 127)" in run.logText(),
        10,
        what="the second SIGTTOU handled",
    )
    assert len(run.waitReady()) == 1


@pytest.mark.slow
def test_sighupDuringAnUpgradeIsQueuedAndTxflipUpgradeJoins(
    supervised: Any,
) -> None:
    run = supervised(flipecho(), "--probation", "3")
    command = [sys.executable, "-m", "txflip", "upgrade", "--control", str(run.control)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    with killedAtEnd(first):
        waitFor(lambda: "probation for 3 s" in run.logText(), 30, what="probation")
        run.signal(signal.SIGHUP)
        joined = run.upgrade()
        assert first.wait(30) == 0 and joined.returncode == 0
        assert first.stdout is not None
        assert joined.stdout == first.stdout.read()
    assert "an upgrade runs: the next one is queued" in run.logText()
    # The queued upgrade runs once the first one is over, and once only.
    waitFor(lambda: "generation 3 serves" in run.logText(), 30, what="generation 3")
    assert "generation 4" not in run.logText()


@pytest.mark.slow
def test_aWorkerStopsWhenItsSupervisorIsKilled(supervised: Any) -> None:
    run = supervised(flipecho(), "--workers", "2")
    pids = run.waitReady()
    run.signal(signal.SIGKILL)
    waitFor(lambda: not any(map(pidAlive, pids)), 30, what="workers to stop")
    assert f"the supervisor (pid {run.pid}) is gone: stopping" in run.logText()


@pytest.mark.slow
def test_orphansAreReaped(supervised: Any) -> None:
    """
    A worker's own child, orphaned, is reparented to the supervisor (a child
    subreaper) and reaped once it exits.
    """
    orphan = '(sleep 2 & echo $! > orphan.pid); exec "$@"'
    run = supervised(["sh", "-c", orphan, "sh", *flipecho()])
    run.waitReady()
    pid = waitFor(lambda: readPidFile(run.dir / "orphan.pid"), 10, what="orphan")
    with open(f"/proc/{pid}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == run.pid
    waitFor(lambda: not os.path.exists(f"/proc/{pid}"), 10, what="orphan reaped")


def test_firstStartFailureExitsWithTheReason(supervised: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listen = f"tcp:{port}:interface=127.0.0.1"
        run = supervised(flipecho("--listen", listen), "--workers", "2", wait=False)
        assert run.proc.waitExit(30) == 1
    assert "txflip run: child pid=" in run.logText()
    assert f"cannot listen on tcp:127.0.0.1:{port}: address already in use" in (
        run.logText()
    )
    assert not run.pidfile.exists() and not run.control.exists()


@pytest.mark.parametrize("preload", ["--preload", "--no-preload"])
def test_workersEachBindingOnePortSayHowToShareIt(
    supervised: Any, preload: str
) -> None:
    """
    A plain C{tcp:} listener is bound by each worker itself: the second finds
    the port taken.  twistd only logs the exception (its log holds stderr), so
    the worker tells the supervisor, whose one line on stderr names it, with
    the way out; then every process of the service is gone.
    """
    www = supervised.tmp / "www"
    www.mkdir()
    listen = f"tcp:{freePort()}:interface=127.0.0.1"
    command = [*twistdCommand(), "-n", "flip", "web", "--listen", listen]
    run = supervised(
        [*command, "--path", str(www)],
        preload,
        *("--workers", "2", "--probation", "0"),
        wait=False,
        errors=True,
    )
    assert run.proc.waitExit(30) == 1
    said = run.errors.read_text().strip()
    oneLine(said, "txflip run: child pid=", "Address already in use", "flip:tcp:")
    assert "Traceback" in run.logText()  # the log has it, as before
    workers = [
        int(pid) for pid in re.findall(r"started worker pid (\d+)", run.logText())
    ]
    assert len(workers) == 2, run.tail()
    waitFor(allGone(*workers), 10, what="the workers gone")
    assert sessionProcesses(run.pid) == []  # its templates too


@pytest.mark.slow
def test_workersSayTheirSocketsComeFromTheSupervisor(supervised: Any) -> None:
    """
    A worker binds no socket itself, whether it asked the supervisor (the first
    worker) or inherited it (a worker of the next generation): its log says so.
    """
    run = supervised(flipecho(), "--probation", "0")
    (first,) = run.waitReady()
    assert run.upgrade().returncode == 0
    (second,) = run.waitReady()
    line = f"listening on tcp:127.0.0.1:{run.port} (from the supervisor pid {run.pid})"
    for pid in (first, second):
        said = [each for each in run.logText().splitlines() if f"[pid {pid}]" in each]
        assert any(each.endswith(f"txflip: {line}") for each in said), run.tail()
    assert "(new)" not in run.logText() and "(inherited)" not in run.logText()


def test_aWorkersOwnControlSocketIsRefusedAtFirstStart(supervised: Any) -> None:
    """
    Every worker would share (and answer on) one control socket: the first
    start fails with one line saying which control socket to use instead.
    """
    own = supervised.tmp / "worker.sock"
    run = supervised(flipecho("--control", str(own)), "--workers", "2", wait=False)
    assert run.proc.waitExit(30) == 1
    error = (
        f"--control {own}: under txflip run the control socket is txflip run's own"
        f" (txflip run --control PATH); supervisor pid {run.pid}"
    )
    assert "txflip run: cannot start: child pid=" in run.logText(), run.tail()
    assert error in run.logText(), run.tail()
    failure = [
        line for line in run.logText().splitlines() if "txflip run: child" in line
    ]
    assert len(failure) == 1 and failure[0].endswith(error), failure
    assert not own.exists() and not run.pidfile.exists() and not run.control.exists()


@pytest.mark.slow
def test_aWorkersExitIsSeenThoughAGrandchildHoldsItsPipes(supervised: Any) -> None:
    """
    A worker's own child that inherited its fds (here: a shell's background
    C{sleep}, holding the ready and parent pipes and stdout) does not hide the
    worker's death: it is replaced at once, not when the grandchild exits; and
    the grandchild's output still reaches the log.
    """
    holder = '(echo "sleeping"; exec sleep 60) & echo $! > holder.pid; exec "$@"'
    run = supervised(["sh", "-c", holder, "sh", *flipecho()])
    (pid,) = run.waitReady()
    sleeper = waitFor(lambda: readPidFile(run.dir / "holder.pid"), 10, what="holder")
    try:
        with open(f"/proc/{sleeper}/fdinfo/3"):
            pass  # it holds the ready pipe
        assert "sleeping" in run.logText()
        os.kill(pid, signal.SIGKILL)
        (new,) = waitFor(
            lambda: [p for p in run.ready() if p != pid], 10, what="a replacement"
        )
        assert new != pid and pidAlive(sleeper)  # it did not wait for the holder
        assert "was killed by SIGKILL after ready; replacing it" in run.logText()
    finally:
        os.kill(sleeper, signal.SIGKILL)
    assert echo(run.port) == b"hello\n"


@pytest.mark.slow
def test_theSupervisorKeepsTlsOut(supervised: Any) -> None:
    """
    The supervisor never speaks TLS: pyOpenSSL and cryptography (about 12 MiB of
    RSS) stay out of it, though importing txflip comes first; a worker has them.
    """
    run = supervised(flipecho())
    (worker,) = run.waitReady()
    with open(f"/proc/{worker}/maps") as f:
        assert "/cryptography/" in f.read()
    with open(f"/proc/{run.pid}/maps") as f:
        assert "/cryptography/" not in f.read()


#: Written where PYTHONPATH puts it first: every process of the run writes the names
#: of the modules it holds as it exits, in modules-PID.
_DUMP_MODULES = """\
import atexit, os, sys

def _dump():
    loaded = sorted(n for n, m in list(sys.modules.items()) if m is not None)
    with open(os.path.join({where!r}, f"modules-{{os.getpid()}}"), "w") as f:
        f.write("\\n".join(loaded))

atexit.register(_dump)
"""

#: What a plain supervisor (no --admin) keeps out: pyOpenSSL's TLS (Python's own
#: ssl comes with asyncio, which Twisted's Deferreds import), the web and the metrics (the workers' business, and --admin's), the checker's
#: clients (its parser, txflip.check._cli, is every txflip command's).
KEPT_OUT = (
    "OpenSSL",
    "cryptography",
    "twisted.web",
    "prometheus_client",
    "txflip.check._drive",
    "txflip.check._http",
    "h11",
)


@pytest.mark.slow
def test_thePlainSupervisorImportsOnlyWhatItUses(supervised: Any) -> None:
    """
    A supervisor without --admin, through its start, an upgrade and a graceful
    stop, never imports TLS, twisted.web, prometheus_client or the checker
    (each costs memory in the one process that lives as long as the service); a
    worker of the same run has ssl.
    """
    tmp = supervised.tmp
    site = tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_DUMP_MODULES.format(where=str(tmp)))
    run = Supervised(
        tmp, flipecho(), "--probation", "0", env={"PYTHONPATH": f"{site}:{ROOT}"}
    )
    supervised.started.append(run)
    (worker,) = run.waitReady()
    assert run.upgrade().returncode == 0, run.tail()
    run.signal(signal.SIGTERM)
    assert run.proc.waitExit(30) == 0, run.tail()
    workerList = tmp / f"modules-{worker}"
    waitFor(workerList.exists, 30, what="the first worker's list")
    loaded = (tmp / f"modules-{run.pid}").read_text().split()
    assert "txflip.run._supervisor" in loaded
    unwanted = [
        n for n in loaded if any(n == k or n.startswith(k + ".") for k in KEPT_OUT)
    ]
    assert unwanted == []
    assert "ssl" in workerList.read_text().split()


# --- bad input: one line, a non-zero exit, nothing left behind ---------------------


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "no command given (txflip run [options] -- COMMAND [ARG...])"),
        (["--"], "no command given"),
        (["--", "no-such-command-here"], "command not found: no-such-command-here"),
        (["--workers", "0", "--", "true"], "expected a whole number of workers from 1"),
        (["--workers", "128", "--", "true"], "workers from 1 to 127, not '128'"),
        (["--workers", "100000000", "--", "true"], "workers from 1 to 127"),
        (["--workers", "-1", "--", "true"], "expected a whole number of workers"),
        (["--workers", "two", "--", "true"], "expected a whole number of workers"),
        (["--probation", "nan", "--", "true"], "expected a finite number of seconds"),
    ],
)
def test_badArguments(tmp_path: Path, args: list[str], error: str) -> None:
    result = txflip("run", "--pidfile", str(tmp_path / "p"), *args)
    assert result.returncode == 2
    assert result.stderr.startswith("txflip run: ") and error in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_pidFileOrControlSocketInUse(supervised: Any, tmp_path: Path) -> None:
    run = supervised(flipecho())
    before = sorted(tmp_path.iterdir())
    other = str(tmp_path / "other")
    for options, error in (
        (["--pidfile", str(run.pidfile)], f"another server is running, PID {run.pid}"),
        (
            ["--pidfile", other, "--control", str(run.control)],
            f"cannot listen on unix:{run.control}: address already in use",
        ),
    ):
        result = txflip("run", *options, "--", *flipecho())
        assert result.returncode == 1
        assert result.stderr.startswith(f"txflip run: {error}"), result.stderr
        assert result.stderr.count("\n") == 1
        assert sorted(tmp_path.iterdir()) == before
    assert pidFileStays(run) and run.waitReady()


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="a new PID namespace needs root and unshare(1): run the suite as root, as"
    " CI does",
)
@pytest.mark.slow
def test_pid1InANewPidNamespace(supervised: Any) -> None:
    """
    As PID 1 of its namespace, the supervisor upgrades (nothing dies with the
    old worker), reaps an orphan, and leaves no zombie.
    """
    orphan = '(sleep 1 & echo $! > orphan.pid); exec "$@"'
    run = Supervised(
        supervised.tmp,
        ["sh", "-c", orphan, "sh", *flipecho()],
        prefix=["unshare", "--pid", "--fork", "--mount-proc"],
        pidNamespace=True,
    )
    supervised.started.append(run)
    old = run.waitReady()
    assert run.status()["pid"] == 1
    result = run.upgrade()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() != [str(p) for p in old]
    assert echo(run.port) == b"hello\n"
    (supervisor,) = children(run.pid)  # unshare's child: PID 1 inside
    inside = waitFor(lambda: readPidFile(run.dir / "orphan.pid"), 10)
    waitFor(
        lambda: not os.path.exists(f"/proc/{supervisor}/root/proc/{inside}"),
        10,
        what="the orphan reaped",
    )
    waitFor(lambda: not zombies(supervisor), 10, what="no zombies")
    os.kill(supervisor, signal.SIGINT)
    assert run.proc.waitExit(30) == 0


def children(pid: int) -> list[int]:
    return [p for p, _ in _stats() if _ppid(p) == pid]


def zombies(parent: int) -> list[int]:
    return [p for p, state in _stats() if state == "Z" and _ppid(p) == parent]


def _stats() -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    found.append((int(entry), f.read().rsplit(")", 1)[1].split()[0]))
            except OSError:
                pass
    return found


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


@pytest.mark.slow
def test_usr1ReachesTheWorkersAndHupToAWorkerIsRefused(
    supervised: Any,
) -> None:
    """
    USR1 to the supervisor reopens the workers' log file (logrotate's
    ``postrotate``); SIGHUP to a worker asks it to upgrade itself, which it
    refuses, naming its supervisor.
    """
    run = supervised([*flipecho()[:2], "-n", "--logfile", "w.log", *flipecho()[3:]])
    (worker,) = run.waitReady()
    log = run.dir / "w.log"
    waitFor(lambda: log.exists() and "ready" in log.read_text(), 10, what="w.log")
    log.rename(run.dir / "w.log.1")
    run.signal(signal.SIGUSR1)
    waitFor(log.exists, 10, what="the log reopened")
    os.kill(worker, signal.SIGHUP)
    refused = f"this is a worker of the supervisor pid {run.pid}: upgrade that"
    waitFor(lambda: refused in log.read_text(), 10, what="the refusal")
    assert run.waitReady() == [worker]
    assert echo(run.port) == b"hello\n"


@pytest.mark.slow
def test_aCrashLoopBacksOffAndRecovers(supervised: Any) -> None:
    run = supervised(["sh", "-c", BAD_DEPLOY, "sh", *flipecho()])
    (pid,) = run.waitReady()
    (run.dir / "broken").touch()
    os.kill(pid, signal.SIGKILL)
    waitFor(lambda: "restarting in 1 s" in run.logText(), 30, what="a backoff")
    note = run.status()["note"]
    assert "exited with status 3 before it was ready" in note, note
    assert "restarting in" in note
    log = run.logText()
    assert log.index("restarting in 0.5 s") < log.index("restarting in 1 s")
    (run.dir / "broken").unlink()
    (new,) = waitFor(run.ready, 30, what="a replacement")
    assert new != pid and run.status()["note"] is None
    assert echo(run.port) == b"hello\n"


@pytest.mark.slow
def test_theSupervisorAloneTellsSystemd(tmp_path: Path) -> None:
    """
    With NOTIFY_SOCKET (a test playing systemd): READY=1 with the supervisor's
    own pid once its workers serve, RELOADING=1 and READY=1 around an upgrade,
    STOPPING=1; the workers say nothing (no NotifyAccess=all needed).
    """
    from tests.test_systemd import NotifySocket

    notify = NotifySocket(tmp_path / "notify")
    env = {"NOTIFY_SOCKET": str(notify.path)}
    run = Supervised(
        tmp_path, flipecho(), "--workers", "2", "--probation", "0", env=env
    )
    try:
        run.waitReady()
        (ready,) = notify.waitFor(1)
        assert ready["READY"] == "1" and ready["MAINPID"] == str(run.pid)
        assert run.upgrade().returncode == 0
        _, reloading, reloaded = notify.waitFor(3)
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        assert reloaded["READY"] == "1" and "MAINPID" not in reloaded
        run.signal(signal.SIGTERM)
        assert run.proc.waitExit(30) == 0
        messages = notify.waitFor(4)
        assert messages[3]["STOPPING"] == "1" and len(messages) == 4, messages
    finally:
        run.close()
        notify.close()
