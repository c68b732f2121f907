"""
C{txflip status} against hostile names: a Unix socket any local user binds, whose
path contains a newline, must not break the reading of C{/proc/net/unix} (every
worker's connection count went blank); and a listener path with control
characters (ESC, BEL, newline) is printed escaped in the text output, as C{--json}
does, never raw to the operator's terminal.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import twistdCommand
from tests.harness import waitFor
from tests.supervised import Supervised, txflip

#: A name with a newline followed by what looks like a /proc/net/unix entry, an
#: escape sequence (red) and a bell.
HOSTILE = "s\n0000: 00000002 00000000 00010000 0001 01 1\x1b[31m\x07"


@pytest.fixture
def short() -> Iterator[Path]:
    """
    A directory with a short path: a Unix socket's path is at most 107 bytes, and
    pytest's C{tmp_path} with these names can be longer.
    """
    path = Path(tempfile.mkdtemp(prefix="txs", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def stray(short: Path) -> Iterator[socket.socket]:
    """
    A listening Unix socket bound at a hostile path, as any local user could.
    """
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(short / HOSTILE))
        s.listen()
        yield s


@pytest.fixture
def run(tmp_path: Path, short: Path) -> Iterator[Supervised]:
    listener = short / "l\x1b[31m\x07\nx.sock"
    command = [
        *twistdCommand(),
        "-n",
        "flipecho",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        f"unix:{listener}",
    ]
    supervised = Supervised(tmp_path, command)
    try:
        yield supervised
    finally:
        supervised.close()


def test_connectionCountsSurviveAHostileSocketName(
    stray: socket.socket, run: Supervised
) -> None:
    assert len(run.waitReady()) == 1
    with socket.create_connection(("127.0.0.1", run.port), timeout=5) as client:
        client.sendall(b"hi\n")
        assert client.recv(100) == b"hi\n"
        counts = waitFor(
            lambda: [w["connections"] for w in run.status()["workers"]] == [1],
            10,
            what="one connection counted",
        )
        assert counts


def test_statusTextEscapesControlCharacters(run: Supervised) -> None:
    run.waitReady()
    result = txflip("status", "--control", str(run.control))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "\x1b" not in text and "\x07" not in text, repr(text)
    (line,) = [row for row in text.splitlines() if row.startswith("listeners")]
    assert "l\\x1b[31m\\x07\\nx.sock" in line, repr(text)
