"""
The admin endpoint (C{--admin}): C{/metrics} scraped with C{prometheus_client}'s own
parser across real upgrades, C{/livez} and C{/readyz} as a stop begins; standalone
(flipecho) and under C{txflip run}.
"""

from __future__ import annotations

import os
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import allGone, freePort, pidAlive, readPidFile, waitFor
from tests.run.test_run import BAD_DEPLOY, DIES, supervised  # noqa: F401 - a fixture
from tests.supervised import flipecho, txflip

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """
    Every sample of C{/metrics}, by name and labels, as prometheus_client parses it.
    """
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), -1.0)


def upgrades(samples: Samples, result: str) -> float:
    return value(samples, "txflip_upgrades_total", result=result)


@pytest.fixture
def held() -> Iterator[Callable[[int, int], list[socket.socket]]]:
    """
    C{held(port, count)}: C{count} echo connections that stay open (moved at every
    upgrade) until the end of the test.
    """
    socks: list[socket.socket] = []

    def hold(port: int, count: int) -> list[socket.socket]:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
            s.sendall(b"hi\n")
            assert s.recv(10) == b"hi\n"
        return socks[-count:]

    yield hold
    for s in socks:
        s.close()


def flipWithAdmin(flip: Any, *args: str, **options: Any) -> tuple[Any, int]:
    """
    flipecho with C{--admin} and a control socket C{ctl}: the server, its admin
    port.
    """
    admin = freePort()
    where = f"tcp:{admin}:interface=127.0.0.1"
    return flip("--admin", where, "--control", "ctl", *args, **options), admin


def upgradeOnce(server: Any) -> None:
    """
    txflip upgrade, and wait until the old generation is gone.
    """
    old = server.serving()
    result = txflip("upgrade", "--control", str(server.dir / "ctl"))
    assert result.returncode == 0, result.stderr + server.logText()[-2000:]
    server.track(int(result.stdout.split()[-1]))
    waitFor(allGone(old), 20, what="the old generation")


def test_countersContinueAcrossUpgrades(flip: Any, fault: Path, held: Any) -> None:
    """
    Standalone flipecho: after 3 upgrades the generation is 4, 3 upgrades
    succeeded and the duration histogram counts 3, the held connections were
    moved 3 times (each count passed on by the generation that moved them); a
    failed upgrade then counts as failed, and the counters stay.
    """
    server, admin = flipWithAdmin(flip, app=True, env={"FLIPAPP_FAULT": str(fault)})
    first = scrape(admin)
    assert value(first, "txflip_generation") == 1
    assert upgrades(first, "succeeded") == 0
    assert value(first, "txflip_upgrade_duration_seconds_count") == 0
    held(server.port, 2)
    waitFor(lambda: value(scrape(admin), "txflip_connections_open") == 2, 10)
    for generation in (2, 3, 4):
        upgradeOnce(server)
        samples = scrape(admin)
        assert value(samples, "txflip_generation") == generation
        assert upgrades(samples, "succeeded") == generation - 1
    samples = scrape(admin)
    assert value(samples, "txflip_upgrade_duration_seconds_count") == 3
    assert 0 < value(samples, "txflip_upgrade_duration_seconds_sum") < 60
    assert value(samples, "txflip_connections_moved_total") == 6
    assert value(samples, "txflip_connections_open") == 2
    fault.write_text("exit")
    result = txflip("upgrade", "--control", str(server.dir / "ctl"))
    assert result.returncode != 0
    after = scrape(admin)
    assert upgrades(after, "failed") == 1
    assert upgrades(after, "succeeded") == 3
    assert value(after, "txflip_generation") == 4
    assert value(after, "txflip_connections_moved_total") == 6


def test_drainedConnectionsAreCountedByTheNextGeneration(flip: Any, held: Any) -> None:
    """
    --no-move: the old generation drains the held connections after the new one
    took over; its final counts reach the new generation once it has exited.
    """
    server, admin = flipWithAdmin(flip, "--no-move", "--idle-grace", "0.2")
    held(server.port, 3)
    upgradeOnce(server)
    waitFor(
        lambda: value(scrape(admin), "txflip_connections_drained_total") == 3,
        10,
        what="the drained connections counted",
    )
    samples = scrape(admin)
    assert value(samples, "txflip_connections_moved_total") == 0
    assert value(samples, "txflip_connections_aborted_total") == 0
    assert value(samples, "txflip_connections_open") == 0


def test_readyzFailsAtFinalStopBeforeTheDrain(flip: Any, held: Any) -> None:
    """
    SIGQUIT: on an admin connection opened before it, /readyz answers 503 while a
    client connection is still open (draining, not yet drained); /livez 200.
    """
    admin = freePort()
    server = flip("--admin", f"tcp:{admin}:interface=127.0.0.1", "--idle-grace", "20")
    assert get(admin, "/readyz") == 200
    assert get(admin, "/livez") == 200
    assert get(admin, "/nothing") == 404
    [client] = held(server.port, 1)
    with socket.create_connection(("127.0.0.1", admin), timeout=5) as probe:
        waitFor(lambda: value(scrape(admin), "txflip_connections_open") == 1, 10)
        pid = server.serving()
        os.kill(pid, signal.SIGQUIT)
        waitFor(
            lambda: (
                "draining" in server.logText()
                or "stopped listening" in server.logText()
            ),
            10,
            what="the stop",
        )
        probe.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = probe.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        # The client is not drained yet: it is still served.
        client.sendall(b"still\n")
        assert client.recv(10) == b"still\n"
        assert pidAlive(pid)


def withAdmin(start: Any, wrapper: str, *options: str) -> tuple[Any, int]:
    """
    txflip run --admin over flipecho started by the shell script C{wrapper}: the
    run, and its admin port.
    """
    admin = freePort()
    run = start(
        ["sh", "-c", wrapper, "sh", *flipecho()],
        *options,
        "--admin",
        f"tcp:{admin}:interface=127.0.0.1",
    )
    return run, admin


def test_underTxflipRun(supervised: Any, held: Any) -> None:  # noqa: F811
    """
    txflip run --admin: the supervisor counts (3 upgrades, then a failed one: a
    bad deploy), the workers report what they moved, the workers by state;
    /readyz fails on SIGUSR2, /livez does not.
    """
    run, admin = withAdmin(supervised, BAD_DEPLOY, "--workers", "2", "--probation", "0")
    samples = scrape(admin)
    assert value(samples, "txflip_workers", state="ready") == 2
    assert value(samples, "txflip_generation") == 1
    held(run.port, 2)
    for _ in range(3):
        result = run.upgrade()
        assert result.returncode == 0, result.stderr + run.tail()
        for pid in result.stdout.split():
            run.track(int(pid))
    waitFor(lambda: value(scrape(admin), "txflip_workers", state="stopping") == 0, 30)
    samples = scrape(admin)
    assert value(samples, "txflip_generation") == 4
    assert upgrades(samples, "succeeded") == 3
    assert value(samples, "txflip_upgrade_duration_seconds_count") == 3
    waitFor(
        lambda: value(scrape(admin), "txflip_connections_moved_total") == 6,
        20,
        what="the moved connections reported",
    )
    (run.dir / "broken").write_text("")
    assert run.upgrade().returncode != 0
    samples = scrape(admin)
    assert upgrades(samples, "failed") == 1
    assert value(samples, "txflip_generation") == 4
    assert value(samples, "txflip_worker_restarts_total") == 0
    assert get(admin, "/readyz") == 200
    run.signal(signal.SIGUSR2)
    waitFor(lambda: get(admin, "/readyz") == 503, 10)
    assert get(admin, "/livez") == 200


def test_rollbackUnderTxflipRun(supervised: Any) -> None:  # noqa: F811
    """
    A new worker that dies during the probation: counted as rolled back.
    """
    run, admin = withAdmin(supervised, DIES, "--probation", "5")
    (run.dir / "dies").write_text("")
    result = run.upgrade()
    assert "rolled back" in result.stderr, result.stderr
    samples = scrape(admin)
    assert upgrades(samples, "rolled_back") == 1
    assert upgrades(samples, "failed") == 0
    assert value(samples, "txflip_generation") == 1
    assert readPidFile(run.pidfile) == run.pid


def test_prometheusClientImportedOnlyWhenScraped() -> None:
    """
    Neither C{import txflip}, nor a service, nor the supervisor with its admin
    endpoint set up imports prometheus_client: a scrape does.
    """
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import sys, txflip, txflip.service, txflip.twistd, txflip.run._cli,"
        " txflip.run._admin, txflip.control._carry\n"
        "assert 'prometheus_client' not in sys.modules\n"
        "from txflip.control._metrics import Counts, Exposition\n"
        "class S:\n"
        "    generation = 1\n"
        "    connections = 0\n"
        "    def counts(self): return Counts()\n"
        "    def workers(self): return None\n"
        "body, kind = Exposition(S()).render('')\n"
        "assert b'txflip_generation 1.0' in body, body\n"
        "assert 'prometheus_client' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_readyzFailsWhileTxflipRunStops(supervised: Any, held: Any) -> None:  # noqa: F811
    """
    SIGTERM to txflip run: /readyz is 503 (on new connections: the supervisor
    serves it until it exits) while a worker still drains a client connection.
    """
    run, admin = withAdmin(supervised, 'exec "$@"', "--probation", "0")
    (client,) = held(run.port, 1)
    assert get(admin, "/readyz") == 200
    run.signal(signal.SIGTERM)
    waitFor(lambda: get(admin, "/readyz") == 503, 10, what="503")
    assert get(admin, "/livez") == 200
    client.sendall(b"still\n")
    assert client.recv(10) == b"still\n"


def test_aWorkerRefusesAnAdminEndpoint(supervised: Any) -> None:  # noqa: F811
    """
    Under txflip run the admin endpoint is the supervisor's: a worker asked for
    one does not start, and says why.
    """
    run = supervised(flipecho("--admin", "tcp:0:interface=127.0.0.1"), wait=False)
    assert run.proc.waitExit(30) == 1
    assert "under txflip run the admin endpoint is txflip run's own" in run.logText()
