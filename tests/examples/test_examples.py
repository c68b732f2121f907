"""
Every example in C{examples/} is started, upgraded three times under its own
client, and stopped: they are the README's snippets, so they must not rot.
"""

from __future__ import annotations

import functools
import http.client
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Flip, reapExited, twistdCommand
from tests.framed import AMPCodec, Codec, Connection, IntN, ampBox
from tests.harness import freePort, waitFor, waitForUpgrade

pytestmark = pytest.mark.slow

EXAMPLES = ROOT / "examples"
UPGRADES = 3


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Callable[..., tuple[Flip, int]]]:
    """
    Start C{examples/NAME PORT PIDFILE} (or, given C{twistd}, twistd with
    those arguments and C{--port PORT}); return it and its port.  Killed at the
    end whatever happens.
    """
    started: list[Flip] = []

    def start(name: str, twistd: tuple[str, ...] = ()) -> tuple[Flip, int]:
        port = freePort()
        pidFile = tmp_path / "twistd.pid"
        path = [str(ROOT)]
        if twistd:
            argv = [*twistdCommand(), "-n", f"--pidfile={pidFile}", *twistd]
            argv += ["--port", str(port)]
            path.insert(0, str(EXAMPLES / name))
        else:
            argv = [sys.executable, str(EXAMPLES / name), str(port), str(pidFile)]
        server = Flip(tmp_path, argv, {"PYTHONPATH": os.pathsep.join(path)})
        started.append(server)
        server.track(server.proc.pid)
        server.waitReady()
        return server, port

    yield start
    for server in started:
        server.proc.close()
        reapExited(server)


def successor(server: Flip, old: int) -> int | None:
    pid = server.serving()
    return pid if pid != old else None


def upgradeAndStop(server: Flip, meanwhile: Callable[[], object]) -> None:
    """
    Upgrade C{server} three times, calling C{meanwhile()} once each new
    generation serves (the old one drains meanwhile); then stop it gracefully.
    """
    for _ in range(UPGRADES):
        old = server.serving()
        os.kill(old, signal.SIGHUP)
        server.track(waitFor(functools.partial(successor, server, old), 30))
        meanwhile()
        waitForUpgrade(server.pidfile, old, timeout=30)
    last = server.serving()
    os.kill(last, signal.SIGQUIT)
    waitFor(lambda: last not in server.alive(), 20, what="the stop")
    log = server.logText()
    assert "Traceback" not in log, log[-3000:]
    assert f"[pid {last}]" in log and len(set(server.pids)) == UPGRADES + 1


def test_chatUsersKeepTheirNicknames(example: Any) -> None:
    """
    Two chat users keep their socket and their nickname through three upgrades;
    a line half typed before each upgrade is finished after it.
    """
    server, port = example("chat.py")
    alice, bob = Connection(port, Codec()), Connection(port, Codec())
    assert alice.ask(b"/nick alice") == b"* you are alice"
    assert bob.ask(b"/nick bob") == b"* you are bob"
    ports = (alice.port, bob.port)
    alice.send(b"half ")
    upgrades = iter(range(UPGRADES, 0, -1))

    def talk() -> None:
        alice.send(b"typed\r\n")
        for user in (alice, bob):
            assert user.reply() == b"<alice> half typed"
        assert bob.ask(b"still bob") == b"<bob> still bob"
        assert alice.reply() == b"<bob> still bob"
        if next(upgrades) > 1:
            alice.send(b"half ")

    upgradeAndStop(server, talk)
    assert (alice.port, bob.port) == ports


def test_rpcDrains(example: Any) -> None:
    """
    An RPC client connects again after each close; a slow request sent as an
    upgrade begins is answered, then the connection closes.
    """
    server, port = example("rpc.py")
    state: dict[str, Any] = {"client": Connection(port, IntN("!I"))}
    assert state["client"].ask(b"upper hi") == b"HI"

    def call() -> None:
        client = state["client"]
        assert client.ask(b"slow later") == b"LATER"
        assert client.closedByServer(wait=True)
        client.close()
        state["client"] = Connection(port, IntN("!I"))
        assert state["client"].ask(b"upper again") == b"AGAIN"

    upgradeAndStop(server, call)
    state["client"].close()


def test_ampServiceAnswersThenDrains(example: Any) -> None:
    """
    An AMP client's command in flight during each upgrade is answered, then
    the connection closes; the next one is served by the new generation.
    """
    server, port = example("ampservice.py")
    codec = AMPCodec(b"Add", "a", "total")
    state: dict[str, Any] = {"client": Connection(port, codec)}

    def add(client: Connection, a: int, b: int) -> int:
        box = {"_command": b"Add", "_ask": b"1", "a": b"%d" % a, "b": b"%d" % b}
        client.send(ampBox(**box))
        return int(client.reply())

    assert add(state["client"], 1, 2) == 3

    def call() -> None:
        client = state["client"]
        assert add(client, 2, 3) == 5
        assert client.closedByServer(wait=True)
        client.close()
        state["client"] = Connection(port, codec)
        assert add(state["client"], 4, 5) == 9

    upgradeAndStop(server, call)
    state["client"].close()


def test_kleinAppBehindFlip(example: Any) -> None:
    """
    A keep-alive HTTP client of the Klein app is answered through each upgrade.
    """
    server, port = example("kleinapp.py")
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get() -> None:
        client.request("GET", "/")
        # The old generation, or the new one once the connection has moved.
        assert client.getresponse().read().startswith(b"hello from pid ")

    get()
    upgradeAndStop(server, get)
    client.close()


def test_twistdPluginOfYourOwn(example: Any) -> None:
    """
    The user's own twistd plugin (examples/twistd) upgrades; its connection
    moves with its count.
    """
    server, port = example("twistd", twistd=("linecount",))
    client = Connection(port, Codec())
    counted = iter(range(1, 100))
    assert client.ask(b"one") == b"%d one" % next(counted)

    def count() -> None:
        assert client.ask(b"more") == b"%d more" % next(counted)

    upgradeAndStop(server, count)
    client.close()
