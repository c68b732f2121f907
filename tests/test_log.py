"""
Unit tests for txflip._log: the append-only log file and its reopening on SIGUSR1.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from txflip._log import AppendFile, reopenOnUSR1


class HandingReactor:
    """
    Records what a signal handler hands over (C{callFromThread}), for the test to
    run.
    """

    def __init__(self) -> None:
        self.handed: list[Callable[[], object]] = []

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        self.handed.append(lambda: f(*args))


@pytest.fixture
def defaultUSR1() -> Iterator[None]:
    """
    SIGUSR1 at its default (reopenOnUSR1 leaves an application's handler alone),
    restored afterwards.
    """
    previous = signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_usr1ReopensTheLogFileThroughTheGivenReactor(
    tmp_path: Path, defaultUSR1: None
) -> None:
    """
    The handler only hands the reopening to the reactor it was given; once that
    runs it, the file is written at its path again (after logrotate's rename).
    """
    path = tmp_path / "app.log"
    target = AppendFile(str(path))
    reactor = HandingReactor()
    reopenOnUSR1(target, reactor)
    target.write("before\n")
    path.rename(tmp_path / "app.log.1")
    os.kill(os.getpid(), signal.SIGUSR1)
    assert len(reactor.handed) == 1
    target.write("still the old file\n")
    reactor.handed[0]()
    target.write("after\n")
    assert (tmp_path / "app.log.1").read_text() == "before\nstill the old file\n"
    assert path.read_text() == "after\n"


def test_usr1WithoutAFileHandsNothingOver(defaultUSR1: None) -> None:
    """
    With no log file, SIGUSR1 is caught (it never kills a generation) and does
    nothing.
    """
    reactor = HandingReactor()
    reopenOnUSR1(None, reactor)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert reactor.handed == []
