"""
Moving connections under C{txflip run}: from each retiring worker to a newer one,
directly (the supervisor only pairs them and hands over one end of the channel).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import lines
from tests.harness import allGone, moreThan, waitFor
from tests.supervised import Supervised, flipecho
from tests.talkers import everyKind

pytestmark = pytest.mark.slow

UPGRADES = 5


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Any]:
    started: list[Supervised] = []

    def start(*options: str) -> Supervised:
        run = Supervised(tmp_path, flipecho("--idle-grace", "5"), *options)
        started.append(run)
        run.waitReady()
        return run

    yield start
    for run in started:
        run.close()


@pytest.mark.parametrize("probation", ["0", "0.5"])
def test_connectionsMoveBetweenWorkers(supervised: Any, probation: str) -> None:
    """
    Two workers, upgraded five times (chained without probation, all at once
    after it): lock-step, idle and streaming clients keep their first socket and
    lose nothing; a partial line crosses the upgrades.
    """
    run = supervised("--workers", "2", "--probation", probation)
    pids = run.waitReady()
    partial = socket.create_connection(("127.0.0.1", run.port), timeout=10)
    partial.sendall(b"par")
    with everyKind(run.port, lockstep=6, idle=20, seed=3) as clients:
        for _ in range(UPGRADES):
            before = clients.lockstep.stats.exchanges
            result = run.upgrade()
            assert result.returncode == 0, result.stderr + run.tail()
            new = [int(p) for p in result.stdout.split()]
            for pid in new:
                run.track(pid)
            waitFor(allGone(*pids), 30, what="old")
            pids = new
            waitFor(
                moreThan(lambda: clients.lockstep.stats.exchanges, before + 20),
                20,
                what="traffic",
            )
    partial.sendall(b"tial\n")
    assert lines(partial) == b"partial\n"
    partial.close()
    moved = [
        int(n) for n in re.findall(r"moved (\d+) connections to a newer", run.logText())
    ]
    # Every retiring worker moved what it had (2 per upgrade); together, all.
    assert len(moved) == 2 * UPGRADES, moved
    assert sum(moved[-2:]) == 6 + 20 + 2, moved
    assert "connections drain here" not in run.logText()
