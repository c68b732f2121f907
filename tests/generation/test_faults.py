"""
End to end: faults injected into real flipecho generations (tests/flipapp.py), bad
signals at bad times, clients that do not cooperate, and unusable start-up state.

The rule each test checks: the service keeps serving and no client sees an error,
unless the fault itself kills a process that holds connections (then only that
process's own connections may fail, and nothing is ever refused).  Where a fault
cannot be survived (a new generation that crashes right after it said it was
ready), the test pins down the behaviour the README documents.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    ROOT,
    Flip,
    PartialRequest,
    alone,
    echo,
    heldChild,
    oneLineError,
    reapExited,
    runTwistd,
    session,
    signalStartingChild,
    spawned,
    trafficFlows,
    twistdCommand,
    upgradeWorks,
    waitLine,
    waitLog,
)
from tests.harness import Load, pidAlive, readPidFile, reap, waitFor, waitForUpgrade

LOCALHOST = "127.0.0.1"
TCP0 = "tcp:0:interface=127.0.0.1"


# --- the next generation fails before it is ready -------------------------------


@contextlib.contextmanager
def failedUpgradeUnderLoad(server: Flip, fault: Path, mode: str) -> Iterator[int]:
    """
    Under load, upgrade to a generation with fault C{mode}; the block sees the
    upgrade fail (it is given the child's pid).  Then: the old generation still
    serves, traffic flows, the next upgrade (without the fault) works, and no
    client saw an error.
    """
    pid = server.serving()
    with Load(LOCALHOST, server.port, short=2, long=2) as load:
        trafficFlows(load)
        fault.write_text(mode)
        os.kill(pid, signal.SIGHUP)
        yield spawned(server, 2)
        assert server.serving() == pid
        trafficFlows(load)
        fault.unlink()
        upgradeWorks(server)
        trafficFlows(load)
    assert load.stats.errorsTotal() == 0, load.stats
    alone(server, server.serving())


@pytest.mark.parametrize(
    "mode, status",
    [
        ("exit", "exited with status 3"),
        ("fail-in-makeservice", "exited with status 1"),
        ("exit-before-ready", "exited with status 4"),
    ],
)
@pytest.mark.slow
def test_childFailsDuringStartupUnderLoad(
    flip, fault: Path, mode: str, status: str
) -> None:
    """
    A new generation that exits non-zero while starting (before twistd runs, in the
    application's makeService, or with its sockets adopted and its reactor running)
    fails the upgrade; the old one serves on, no client notices, and the next upgrade
    works.
    """
    server = flip(env={"FLIPAPP_FAULT": str(fault)}, app=True)
    pid = server.serving()
    with failedUpgradeUnderLoad(server, fault, mode) as child:
        text = waitLog(server, "upgrade failed")
        assert f"child pid={child} {status} before it was ready" in text
        assert f"still serving (pid {pid})" in text
        waitFor(lambda: not pidAlive(child), 10, what="the failed child to be gone")


def test_childSigkilledBeforeReadyUnderLoad(flip, fault: Path) -> None:
    server = flip(env={"FLIPAPP_FAULT": str(fault)}, app=True)
    with failedUpgradeUnderLoad(server, fault, "hang") as child:
        os.kill(child, signal.SIGKILL)
        text = waitLog(server, "upgrade failed")
        assert f"child pid={child} was killed by SIGKILL before it was ready" in text


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hang", "block-at-ready"])
def test_childNeverReadyTimesOutUnderLoad(flip, fault: Path, mode: str) -> None:
    """
    A new generation that never becomes ready is killed at the upgrade timeout:
    whether it never got as far as running twistd (C{hang}), or adopted the sockets
    and then blocked its reactor where it would say it is ready (C{block-at-ready}).
    A generation handles no I/O before the reactor turn that declares it ready, so
    the one that is killed never accepted a client connection.
    """
    server = flip(
        "--upgrade-timeout", "1.5", env={"FLIPAPP_FAULT": str(fault)}, app=True
    )
    with failedUpgradeUnderLoad(server, fault, mode) as child:
        text = waitLog(server, "upgrade failed")
        assert f"child pid={child} was not ready within 1.5 s; killed it" in text
        waitFor(lambda: not pidAlive(child), 10, what="the child to be killed")


# --- the next generation dies after it said it was ready -----------------------


@pytest.mark.slow
def test_childCrashesRightAfterReady(flip, fault: Path, partial) -> None:
    """
    Documented behaviour (README, "Failure modes"): once the new generation has said
    it is ready, the handover is done.  If it dies right after, the old generation,
    which has already stopped accepting, says so in its log, finishes its drain (its
    open connections are served to the end) and exits; the service is then down
    until a supervisor starts it again.  A fresh start works at once: the pid file
    names a dead process, which does not count as a running server.
    """
    server = flip("--drain-timeout", "20", env={"FLIPAPP_FAULT": str(fault)}, app=True)
    pid, port = server.serving(), server.port
    client = PartialRequest(port)
    partial.append(client)
    fault.write_text("exit-after-ready")
    os.kill(pid, signal.SIGHUP)
    child = spawned(server, 2)
    text = waitLog(server, "exited with status 7 after it was ready")
    assert f"pid {child}, which replaced this generation," in text
    assert readPidFile(server.pidfile) == child
    assert pidAlive(pid)
    # The old generation still serves the connection it has, to the end.
    assert client.finish() == b"half a line\n"
    assert server.proc.waitExit(20) == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOCALHOST, port), timeout=5).close()
    reapExited(server)
    assert session(server) == []
    # The supervisor's restart: the stale pid file does not stand in its way.
    fault.unlink()
    restarted = flip("--listen", f"tcp:{port}:interface=127.0.0.1")
    assert restarted.serving() not in (pid, child)
    assert echo(port) == b"hello\n"


# --- the old generation is killed ----------------------------------------------


@pytest.mark.slow
def test_oldSigkilledWhileNewStarts(flip, fault: Path, tmp_path: Path) -> None:
    """
    The new generation already holds the listening sockets: connections queue for
    it while it starts, none is refused.  Only connections the killed process had
    accepted can fail (one per client thread at most).  The new generation becomes
    ready, takes the pid file, and upgrades in its turn.
    """
    gate = tmp_path / "go"
    server = flip(env={"FLIPAPP_FAULT": str(fault)}, app=True)
    with Load(LOCALHOST, server.port, short=3, long=0) as load:
        trafficFlows(load)
        pid, child = heldChild(server, fault, gate)
        os.kill(pid, signal.SIGKILL)
        assert server.proc.waitExit(10) == -signal.SIGKILL
        fault.unlink()
        gate.touch()
        waitFor(
            lambda: readPidFile(server.pidfile) == child, 20, what="the child ready"
        )
        trafficFlows(load)
        waitLine(server, child, "previous generation exited; upgrades allowed", 3)
        upgradeWorks(server)
        trafficFlows(load)
    stats = load.stats
    assert stats.count("refused") == 0, stats
    assert stats.errorsTotal() <= 3, stats
    assert "Traceback" not in server.logText()
    alone(server, server.serving())


@pytest.mark.slow
def test_oldSigkilledAfterNewIsReady(flip, partial) -> None:
    """
    Killing the old generation while it drains loses only its own connections; the
    new one learns that its parent is gone and can upgrade.
    """
    server = flip("--no-move", "--drain-timeout", "20")
    pid, port = server.serving(), server.port
    partial.append(PartialRequest(port))
    with Load(LOCALHOST, port, short=2, long=0) as load:
        trafficFlows(load)
        os.kill(pid, signal.SIGHUP)
        child = spawned(server, 2)
        waitLine(server, pid, "txflip: draining")
        waitFor(lambda: readPidFile(server.pidfile) == child, 10, what="handover")
        os.kill(pid, signal.SIGKILL)
        assert server.proc.waitExit(10) == -signal.SIGKILL
        waitLine(server, child, "previous generation exited; upgrades allowed", 3)
        trafficFlows(load)
        upgradeWorks(server)
        trafficFlows(load)
    assert load.stats.errorsTotal() == 0, load.stats
    # The killed process's own connection is lost: closed without its echo.
    try:
        assert partial[0].finish() == b""
    except ConnectionResetError:
        pass
    alone(server, server.serving())


# --- signals at bad times --------------------------------------------------------


@pytest.mark.slow
def test_sighupStorm(flip) -> None:
    """
    50 SIGHUPs within 100 ms: one upgrade runs, every other SIGHUP that reached the
    process is refused with its reason, and no extra process is ever started.
    """
    server = flip()
    pid = server.serving()
    with Load(LOCALHOST, server.port, short=2, long=2) as load:
        trafficFlows(load)
        # Paced (one every 1.6 ms), so that the kernel does not merge them all
        # into one pending signal before the server runs.
        start = time.monotonic()
        for n in range(50):
            os.kill(pid, signal.SIGHUP)
            while time.monotonic() < start + (n + 1) * 0.0016:
                pass
        assert time.monotonic() - start < 0.1
        most = 0

        def upgraded() -> int | None:
            nonlocal most
            most = max(most, len(session(server)))
            now = readPidFile(server.pidfile)
            return now if now != pid and not pidAlive(pid) else None

        new = waitFor(upgraded, 30, what="the upgrade")
        assert most <= 2
        server.track(new)
        trafficFlows(load)
    assert load.stats.errorsTotal() == 0, load.stats
    text = server.logText()
    received = text.count(
        f"[pid {pid}] [txflip.service.UpgradeService#info] txflip: SIGHUP: upgrading"
    )
    refused = len(
        re.findall(
            rf"\[pid {pid}\] .*upgrade refused: (upgrade in progress|terminating)", text
        )
    )
    print(f"\n{received} of 50 SIGHUPs reached pid {pid}, {refused} refused")
    assert text.count("started generation") == 1
    assert received >= 1
    assert refused == received - 1, text
    alone(server, new)


@pytest.mark.parametrize("stop", [signal.SIGQUIT, signal.SIGTERM])
def test_sigquitDuringUpgrade(
    flip, fault: Path, tmp_path: Path, stop: signal.Signals
) -> None:
    """
    SIGQUIT (or twistd's SIGTERM) while the next generation starts: it is killed,
    the old one drains its connections (each closed with a reply) and exits (0 for
    SIGQUIT; after SIGTERM twistd ends by re-raising it), the pid file is removed,
    no process is left.
    """
    gate = tmp_path / "go"
    server = flip(env={"FLIPAPP_FAULT": str(fault)}, app=True)
    with Load(LOCALHOST, server.port, short=0, long=3) as load:
        trafficFlows(load)
        pid, child = heldChild(server, fault, gate)
        os.kill(pid, stop)
        waitLine(server, pid, f"stopping: killing starting child pid {child}")
        expected = 0 if stop == signal.SIGQUIT else -signal.SIGTERM
        assert server.proc.waitExit(20) == expected
        load.stop()
    assert not pidAlive(child)
    assert not server.pidfile.exists()
    reapExited(server)
    assert session(server) == []
    stats = load.stats
    # Each long-lived client was closed with a reply; what failed afterwards is
    # only reconnecting to a service that has stopped.
    assert stats.lost == 0 and stats.closedByServer >= 3, stats
    assert stats.errorsTotal() == stats.count("refused"), stats


@pytest.mark.slow
def test_sighupToAStartingGeneration(flip, fault: Path, tmp_path: Path) -> None:
    """
    A SIGHUP that reaches a new generation before it has installed its handler (a
    process-group or terminal hangup) does not kill it: the parent starts it with
    SIGHUP blocked, and the signal waits for the handler, which refuses to upgrade
    a generation that is not ready (or whose parent is alive).  The upgrade goes on.
    """
    server = flip(env={"FLIPAPP_FAULT": str(fault)}, app=True)
    pid, child = signalStartingChild(server, fault, tmp_path / "go", signal.SIGHUP)
    new, _, _ = waitForUpgrade(server.pidfile, pid, timeout=30)
    assert new == child
    server.track(new)
    waitLine(server, child, "upgrade refused")
    assert echo(server.port) == b"hello\n"
    upgradeWorks(server)
    alone(server, server.serving())


@pytest.mark.slow
def test_sighupDuringDrain(flip, partial) -> None:
    """
    While the old generation drains, SIGHUP to it is refused ("terminating"), and to
    the new one too ("previous generation hasn't exited yet"); nothing is started.
    Once the old one has exited, the new one upgrades.
    """
    server = flip("--no-move", "--drain-timeout", "20")
    pid = server.serving()
    client = PartialRequest(server.port)
    partial.append(client)
    os.kill(pid, signal.SIGHUP)
    child = spawned(server, 2)
    waitLine(server, pid, "txflip: draining")
    os.kill(pid, signal.SIGHUP)
    waitLine(server, pid, "upgrade refused: terminating")
    os.kill(child, signal.SIGHUP)
    waitLine(server, child, "upgrade refused: previous generation hasn't exited yet")
    assert server.logText().count("started generation") == 1
    assert sorted(p for p, _ in session(server)) == sorted([pid, child])
    assert client.finish() == b"half a line\n"
    assert server.proc.waitExit(20) == 0
    waitLine(server, child, "previous generation exited; upgrades allowed")
    upgradeWorks(server)
    alone(server, server.serving())


# --- clients that do not cooperate -----------------------------------------------


class Streamer(threading.Thread):
    """
    A client that never stops sending (a line that never ends, a byte at a time),
    until the server cuts it off.
    """

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection((LOCALHOST, port), timeout=10)
        self.stop = threading.Event()
        self.cutAt: float | None = None
        self.sent = 0

    def run(self) -> None:
        try:
            while not self.stop.wait(0.02):
                self.sock.sendall(b"x")
                self.sent += 1
        except OSError:
            self.cutAt = time.monotonic()
        finally:
            self.sock.close()


@pytest.mark.slow
def test_drainDeadlineCutsUncooperativeClients(flip) -> None:
    """
    A client that never stops sending and one that never reads its replies are
    aborted at the drain timeout, and the old generation then exits.
    """
    server = flip("--no-move", "--drain-timeout", "2", "--idle-grace", "0.2")
    pid, port = server.serving(), server.port
    streamer = Streamer(port)
    streamer.start()
    deaf = socket.create_connection((LOCALHOST, port), timeout=10)
    try:
        # Several MB of lines whose echoes pile up unread: the server can never
        # flush them, so it can never close this connection cleanly.
        deaf.sendall((b"x" * 1023 + b"\n") * 8192)
        waitFor(lambda: streamer.sent > 5, 10, what="the streamer to stream")
        os.kill(pid, signal.SIGHUP)
        new = spawned(server, 2)
        waitFor(lambda: readPidFile(server.pidfile) == new, 20, what="handover")
        handover = time.monotonic()
        assert server.proc.waitExit(20) == 0
        exited = time.monotonic() - handover
        assert 1.5 < exited < 6, exited
        text = waitLine(server, pid, "2 connections aborted at the drain timeout")
        assert "drain timeout: aborting 2 connections" in server.logText(), text
        streamer.join(10)
        assert streamer.cutAt is not None
        assert 1.5 < streamer.cutAt - handover < 6
        with pytest.raises(ConnectionResetError):
            deaf.settimeout(5)
            while deaf.recv(1 << 20):
                pass
    finally:
        streamer.stop.set()
        deaf.close()
    assert echo(port) == b"hello\n"
    alone(server, new)


@pytest.mark.slow
def test_termWhileDrainingAfterAnUpgradeIsQuiet(flip) -> None:
    """
    SIGTERM (or Ctrl-C) reaching an old generation that is already draining after
    an upgrade says it is stopping already: no ReactorNotRunning traceback from
    twistd's handler stopping a stopping reactor, and the generation still exits
    at its drain deadline.
    """
    server = flip("--no-move", "--drain-timeout", "2", "--idle-grace", "0.2")
    pid, port = server.serving(), server.port
    holder = socket.create_connection((LOCALHOST, port), timeout=10)
    try:
        holder.sendall(b"half a line")  # never ends: the drain waits for it
        os.kill(pid, signal.SIGHUP)
        new = spawned(server, 2)
        waitFor(lambda: readPidFile(server.pidfile) == new, 20, what="handover")
        waitLine(server, pid, "draining")
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        assert server.proc.waitExit(20) == 0
        waitLine(server, pid, "1 connections aborted at the drain timeout")
        log = server.logText()
        assert "SIGTERM: stopping already (draining)" in log
        assert "Traceback" not in log and "ReactorNotRunning" not in log, log
    finally:
        holder.close()
    assert echo(port) == b"hello\n"
    alone(server, new)


@pytest.mark.parametrize(
    "signals",
    [("INT", "QUIT"), ("QUIT", "INT"), ("TERM", "QUIT"), ("QUIT", "TERM")],
    ids="+".join,
)
def test_quitWithAnotherStopSignalIsQuiet(flip, signals: tuple[str, str]) -> None:
    """
    SIGQUIT and SIGINT or SIGTERM at once (a Ctrl-C or C{timeout} reach a
    worker of txflip run, then its supervisor's SIGQUIT): whichever the reactor
    hears first stops it, gracefully, and the other is no ReactorNotRunning
    traceback.  Both orders: Python runs pending handlers by signal number, so
    a SIGQUIT's comes before a SIGTERM's and after a SIGINT's.
    """
    server = flip()
    pid, port = server.serving(), server.port
    assert echo(port) == b"hello\n"
    for name in signals:
        os.kill(pid, getattr(signal, f"SIG{name}"))
    server.proc.waitExit(20)
    waitLine(server, pid, "generation 1 finished")
    log = server.logText()
    assert "Traceback" not in log and "ReactorNotRunning" not in log, log


# --- an unusable pid file or address: at first start, or for a later generation --


def test_pidfileParentIsAFileAtFirstStart(tmp_path: Path) -> None:
    """
    As root, permission bits stop nothing: a parent that is a regular file does.
    """
    blocker = tmp_path / "run"
    blocker.write_text("not a directory")
    result = runTwistd(
        ["-n", f"--pidfile={blocker}/echo.pid", "flipecho", "--listen", TCP0],
        tmp_path,
    )
    line = oneLineError(result)
    assert f"cannot write pid file {blocker}/echo.pid" in line
    assert blocker.read_text() == "not a directory"


def failedUpgrade(
    server: Flip, reason: str, pid: int | None = None, traceback: bool = False
) -> str:
    """
    SIGHUP; the upgrade fails for C{reason}, stated in the old generation's log
    line; it serves on.  The log has a traceback only if C{traceback}: the
    child's start raised.
    """
    pid = pid or server.serving()
    os.kill(pid, signal.SIGHUP)
    child = spawned(server, 2)
    line = waitLine(server, pid, "upgrade failed")
    assert f"child pid={child} exited with status 1 before it was ready" in line
    assert reason in line, line
    assert ("Traceback" in server.logText()) == traceback
    waitFor(lambda: not pidAlive(child), 10, what="the failed child to be gone")
    assert echo(server.port) == b"hello\n"
    return line


def test_aChildsExceptionIsNamedInTheFailedUpgrade(flip, fault: Path) -> None:
    """
    A new generation whose start raises (here the plugin's makeService, before
    the generation made its Upgrader) tells its parent the exception on one
    line, and the parent's failed upgrade names it; the traceback is still
    the log's.
    """
    server = flip(env={"FLIPAPP_FAULT": str(fault)}, app=True)
    fault.write_text("fail-in-makeservice")
    failedUpgrade(
        server, ": RuntimeError: flipapp: makeService fails on purpose", traceback=True
    )


@contextlib.contextmanager
def flipWithPidfile(tmp_path: Path, pidfile: Path) -> Iterator[Flip]:
    """
    Like the C{flip} fixture, with twistd's C{--pidfile}.
    """
    argv = [*twistdCommand(), "-n", f"--pidfile={pidfile}", "flipecho"]
    server = Flip(tmp_path, [*argv, "--listen", TCP0], None)
    server.pidfile = pidfile
    server.track(server.proc.pid)
    try:
        server.waitReady()
        yield server
    finally:
        for pid in server.alive():
            os.kill(pid, signal.SIGKILL)
        server.proc.close()
        reapExited(server)


@pytest.mark.slow
def test_pidfileDirectoryGoneForLaterGeneration(tmp_path: Path) -> None:
    """
    The pid file's directory was replaced by a file: the next generation cannot
    write it, so the upgrade fails with that reason.  Once the directory is back,
    the next upgrade works.
    """
    runDir = tmp_path / "run"
    runDir.mkdir()
    pidfile = runDir / "echo.pid"
    with flipWithPidfile(tmp_path, pidfile) as server:
        pid = server.serving()
        moved = tmp_path / "run.moved"
        runDir.rename(moved)
        runDir.write_text("in the way")
        failedUpgrade(server, f"cannot write pid file {pidfile}", pid)
        assert runDir.read_text() == "in the way"
        assert readPidFile(moved / "echo.pid") == pid
        runDir.unlink()
        moved.rename(runDir)
        upgradeWorks(server)
        alone(server, server.serving())


@pytest.mark.slow
def test_addressInUseForLaterGeneration(flip, fault: Path) -> None:
    """
    A later generation whose configuration adds an address someone else holds:
    the upgrade fails with that reason, and the other holder is left alone.
    """
    server = flip(env={"FLIPAPP_FAULT": str(fault)}, app=True)
    with socket.socket() as taken:
        taken.bind((LOCALHOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        fault.write_text(f"listen:tcp:{port}:interface=127.0.0.1")
        failedUpgrade(
            server, f"cannot listen on tcp:127.0.0.1:{port}: address already in use"
        )
        with socket.create_connection((LOCALHOST, port), timeout=5):
            taken.settimeout(5)
            taken.accept()[0].close()
    fault.unlink()
    upgradeWorks(server)
    alone(server, server.serving())


@pytest.mark.slow
def test_failedGenerationLeavesParentsUnixPath(
    flip, fault: Path, tmp_path: Path
) -> None:
    """
    A later generation that inherited a Unix socket and then fails to start (here:
    another address of its configuration is taken) must not remove the path its
    parent still serves.
    """
    path = tmp_path / "served.sock"
    server = flip(
        "--listen",
        f"unix:{path}",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        env={"FLIPAPP_FAULT": str(fault)},
        app=True,
    )
    with socket.socket() as taken:
        taken.bind((LOCALHOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        fault.write_text(f"listen:tcp:{port}:interface=127.0.0.1")
        failedUpgrade(server, "address already in use")
    assert path.exists()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(b"still here\n")
        assert s.recv(100) == b"still here\n"
    fault.unlink()
    upgradeWorks(server)
    alone(server, server.serving())


@pytest.mark.slow
def test_unixPathIsAFileForLaterGeneration(flip, fault: Path) -> None:
    server = flip(env={"FLIPAPP_FAULT": str(fault)}, app=True)
    precious = fault.parent / "data.txt"
    precious.write_text("precious")
    fault.write_text(f"listen:unix:{precious}")
    failedUpgrade(server, "the path exists and is not a socket")
    assert precious.read_text() == "precious"
    fault.unlink()
    upgradeWorks(server)
    alone(server, server.serving())


# --- bad input on the handoff --------------------------------------------------------


def startWithHandoff(
    tmp_path: Path, table: str | None, placed: dict[int, int], port: int
) -> tuple[int, str, bytes]:
    """
    Start C{twistd -n flipecho} as if it were a later generation: the handoff
    marker set to C{table}, and C{placed} fds (ours -> its number) in place.

    @return: exit status, everything it wrote to stdout/stderr, and what it wrote
        on its ready pipe (fd 3) if we placed one.
    """
    out, outW = os.pipe()
    readyR, readyW = os.pipe()
    placed = {**placed}
    if 3 in placed and placed[3] == -1:
        placed[3] = readyW
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    if table is not None:
        env["TXFLIP_HANDOFF"] = table
    devnull = os.open(os.devnull, os.O_RDONLY)
    actions = [
        (os.POSIX_SPAWN_DUP2, devnull, 0),
        (os.POSIX_SPAWN_DUP2, outW, 1),
        (os.POSIX_SPAWN_DUP2, outW, 2),
        *((os.POSIX_SPAWN_DUP2, fd, number) for number, fd in placed.items()),
    ]
    argv = [
        *twistdCommand(),
        "-n",
        "--pidfile=",
        "flipecho",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
    ]
    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    for fd in (outW, readyW, devnull):
        os.close(fd)
    output = b""
    try:
        deadline = time.monotonic() + 30
        while chunk := _readBefore(out, deadline):
            output += chunk
        status = reap(pid, max(deadline - time.monotonic(), 1))
    finally:
        if pidAlive(pid):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(out)
    os.set_blocking(readyR, False)
    try:
        told = os.read(readyR, 4096)
    except BlockingIOError:
        told = b""
    os.close(readyR)
    assert status is not None
    return status, output.decode("utf-8", "replace"), told


def _readBefore(fd: int, deadline: float) -> bytes:
    ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
    if not ready:
        raise AssertionError("the process neither finished nor closed its output")
    return os.read(fd, 65536)


def table(port: int, listeners: int = 1, fd: int = 5, **changes: object) -> str:
    entries = [
        {
            "fd": fd + n,
            "kind": "tcp",
            "host": LOCALHOST,
            "port": port,
            "path": "",
            "requestedPort": port,
        }
        for n in range(listeners)
    ]
    wire: dict[str, object] = {
        "version": 1,
        "generation": 2,
        "ready": 3,
        "parent": 4,
        "listeners": entries,
    }
    wire.update(changes)
    return json.dumps(wire)


@pytest.fixture
def handoffFDs() -> Iterator[dict[str, int]]:
    """
    Things to place in a would-be child: the parent pipe's read end, a listening
    TCP socket (and its port), and odd fds.
    """
    made: list[socket.socket] = []
    fds: dict[str, int] = {}
    parentR, parentW = os.pipe()
    fds["parent"], fds["parentW"] = parentR, parentW

    def sock(family: int, kind: int, listen: bool) -> socket.socket:
        s = socket.socket(family, kind)
        made.append(s)
        s.bind(("::1" if family == socket.AF_INET6 else LOCALHOST, 0))
        if listen:
            s.listen()
        return s

    tcp = sock(socket.AF_INET, socket.SOCK_STREAM, True)
    fds["tcp"], fds["port"] = tcp.fileno(), tcp.getsockname()[1]
    fds["tcp6"] = sock(socket.AF_INET6, socket.SOCK_STREAM, True).fileno()
    fds["udp"] = sock(socket.AF_INET, socket.SOCK_DGRAM, False).fileno()
    fds["bound"] = sock(socket.AF_INET, socket.SOCK_STREAM, False).fileno()
    fds["file"] = os.open(os.devnull, os.O_RDONLY)
    yield fds
    for s in made:
        s.close()
    for name in ("parent", "parentW", "file"):
        os.close(fds[name])


# (what is at fd 5 in the child, the table, the reason expected)
BAD_HANDOFFS: dict[str, tuple[str | None, Callable[[int], str], str]] = {
    "truncated": (None, lambda p: table(p)[:40], "malformed handoff table: not JSON"),
    "wrong version": (
        "tcp",
        lambda p: table(p, version=2),
        "handoff table version 2 is not supported",
    ),
    # fd 60 (nothing there): a lower free number might be an fd of twistd's own.
    "listener fd closed": (
        None,
        lambda p: table(p, fd=60),
        "inherited fd 60 (tcp:127.0.0.1:{port}) is closed",
    ),
    "not a socket": (
        "file",
        table,
        "inherited fd 5 (tcp:127.0.0.1:{port}) is not a socket",
    ),
    "other family": (
        "tcp6",
        table,
        "inherited fd 5 is a AF_INET6/SOCK_STREAM socket, not AF_INET/SOCK_STREAM",
    ),
    "other type": (
        "udp",
        table,
        "inherited fd 5 is a AF_INET/SOCK_DGRAM socket, not AF_INET/SOCK_STREAM",
    ),
    "not listening": ("bound", table, "is not listening"),
    "other port": (
        "tcp",
        lambda p: table(p + 1 if p < 65535 else p - 1),
        "inherited fd 5 is bound to tcp:127.0.0.1:{port}, not",
    ),
}


@pytest.mark.parametrize("case", list(BAD_HANDOFFS))
def test_badHandoffIsOneLine(
    tmp_path: Path, handoffFDs: dict[str, int], case: str
) -> None:
    """
    A marker whose table is malformed or names the wrong fds: one line naming the
    problem, a non-zero exit, no traceback; and the reason goes up the ready pipe,
    so that the parent's failed upgrade says it too.  No fallback: the parent still
    serves, which is the safe outcome.
    """
    at5, makeTable, reason = BAD_HANDOFFS[case]
    port = handoffFDs["port"]
    placed = {3: -1, 4: handoffFDs["parent"]}
    if at5 is not None:
        placed[5] = handoffFDs[at5]
    status, output, told = startWithHandoff(tmp_path, makeTable(port), placed, port)
    reason = reason.format(port=port)
    assert status == 1, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    assert reason in lines[0], output
    assert told.startswith(b"error ") and reason.encode() in told, told


def test_staleMarkerWithoutFds(tmp_path: Path) -> None:
    """
    A marker copied into an environment where no parent placed anything (an
    operator's shell): the fds it names are not there, one line says so.
    """
    status, output, _ = startWithHandoff(tmp_path, table(8080), {}, 8080)
    lines = [line for line in output.splitlines() if line.strip()]
    assert status == 1 and len(lines) == 1, output
    # fd 3 is whatever twistd opened first (closed, or not a pipe): never used.
    assert "handoff ready fd 3 is " in lines[0]
