"""
The supervisor's machine on a fake clock, with fake worker processes (the
L{Worker} spawner seam): probation, rollback and crash backoff, as
C{tests/run/test_run.py} checks them with real processes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from txflip._errors import Stopping, UpgradeError
from txflip.generation._command import Command
from txflip.generation._spawn import Spawn
from txflip.listen._fds import Listeners
from txflip.run._supervisor import SHARE_PORT, Supervisor
from txflip.run._workers import Sockets
from txflip.systemd import Notifier

_pids = itertools.count(4_000_001)


class FakeProcess:
    """
    A worker's process that does what the test says (a L{WorkerProcess}).
    """

    def __init__(self, spawn: Spawn, afterReady: Callable[[Failure], None]) -> None:
        self.pid = next(_pids)
        self.generation = spawn.generation
        self.started: Deferred[int] = succeed(self.pid)
        self.result: Deferred[int] = Deferred()
        self.signals: list[str] = []
        self._afterReady = afterReady

    def ready(self) -> None:
        self.result.callback(self.pid)

    def failBeforeReady(self, why: str) -> None:
        self.result.errback(Failure(UpgradeError(why)))

    def end(self, reason: Exception) -> None:
        self._afterReady(Failure(reason))

    def cancel(self) -> None:
        self.signals.append("cancel")
        self.failBeforeReady("cancelled")

    def signal(self, name: str) -> None:
        self.signals.append(name)


class Fixture:
    def __init__(self, workers: int, probation: float) -> None:
        self.clock = MemoryReactorClock()
        self.processes: list[FakeProcess] = []
        self.supervisor = Supervisor(
            self.clock,
            Command("/bin/false", (), "/"),
            {},
            Sockets(Listeners()),
            workers=workers,
            upgradeTimeout=60,
            probation=probation,
            drainTimeout=60,
            notifier=Notifier(None),
            balance=False,
            spawner=self.spawn,
        )

    def spawn(
        self, reactor: object, spawn: Spawn, afterReady: Callable[[Failure], None]
    ) -> FakeProcess:
        process = FakeProcess(spawn, afterReady)
        self.processes.append(process)
        return process

    def started(self) -> list[FakeProcess]:
        started = self.supervisor.start()
        first = list(self.processes)
        for process in first:
            process.ready()
        self.clock.advance(0)
        assert started.called
        return first

    def upgradeToProbation(self) -> tuple[Deferred[list[int]], list[FakeProcess]]:
        count = len(self.supervisor.workers)
        upgrade = self.supervisor.upgrade()
        new: list[FakeProcess] = []
        for _ in range(count):
            # One by one: the next new worker starts once the last one serves.
            process = self.processes[-1]
            assert process.generation == 2 and process not in new
            new.append(process)
            process.ready()
        assert self.supervisor.status()["state"] == "probation"
        return upgrade, new

    def result(self, d: Deferred[list[int]]) -> list[int] | Failure:
        outcome: list[list[int] | Failure] = []
        d.addBoth(outcome.append)
        self.clock.advance(0)
        assert outcome, "not fired"
        return outcome[0]

    def pids(self) -> list[int]:
        return sorted(w.pid for w in self.supervisor.workers)


def test_newWorkersThatSurviveTheProbationReplaceTheOld() -> None:
    f = Fixture(workers=2, probation=5)
    old = f.started()
    upgrade, new = f.upgradeToProbation()
    f.clock.advance(4.9)
    assert not upgrade.called
    assert all(p.signals == [] for p in old)  # the old serve on meanwhile
    f.clock.advance(0.1)
    assert f.result(upgrade) == [p.pid for p in new]
    assert all(p.signals == ["QUIT"] for p in old)
    assert all(p.signals == [] for p in new)
    for process in old:
        process.end(ProcessDone(0))
    assert f.pids() == sorted(p.pid for p in new)
    status = f.supervisor.status()
    assert status["state"] == "serving" and status["generation"] == 2
    last = status["lastUpgrade"]
    assert isinstance(last, dict) and last["result"].startswith("succeeded: pids ")


def test_aNewWorkerDyingOnProbationRollsBack() -> None:
    f = Fixture(workers=2, probation=5)
    old = f.started()
    upgrade, new = f.upgradeToProbation()
    f.clock.advance(1)
    new[0].end(ProcessTerminated(exitCode=7))
    failure = f.result(upgrade)
    assert isinstance(failure, Failure) and failure.check(UpgradeError)
    reason = f"rolled back: worker pid {new[0].pid} exited with status 7 after ready"
    assert failure.getErrorMessage() == reason
    # The other new worker is stopped; the old ones were never told anything.
    assert new[1].signals == ["QUIT"]
    assert all(p.signals == [] for p in old)
    new[1].end(ProcessDone(0))
    f.clock.advance(10)  # the probation's end changes nothing now
    assert f.pids() == sorted(p.pid for p in old)
    assert len(f.processes) == 4  # no replacement started
    status = f.supervisor.status()
    assert status["state"] == "serving" and status["generation"] == 1
    last = status["lastUpgrade"]
    assert isinstance(last, dict) and last["result"] == f"failed: {reason}"


def test_aCrashLoopBacksOffLongerEachTimeAndRecovers() -> None:
    f = Fixture(workers=1, probation=5)
    (first,) = f.started()
    first.end(ProcessTerminated(signal=9))
    for delay in (0.5, 1, 2, 4):
        spawned = len(f.processes)
        note = f.supervisor.status()["note"]
        assert isinstance(note, str) and note.endswith(f"restarting in {delay:g} s")
        f.clock.advance(delay - 0.01)
        assert len(f.processes) == spawned, f"restarted before {delay} s"
        f.clock.advance(0.01)
        assert len(f.processes) == spawned + 1, f"not restarted after {delay} s"
        f.processes[-1].failBeforeReady("child exited with status 3")
    f.clock.advance(8)
    f.processes[-1].ready()
    assert f.pids() == [f.processes[-1].pid]
    assert f.supervisor.status()["note"] is None


@pytest.mark.parametrize("probation", [0, 5])
def test_aJoinedUpgradeGetsTheSameOutcome(probation: float) -> None:
    f = Fixture(workers=1, probation=probation)
    f.started()
    upgrade = f.supervisor.upgrade()
    joined = f.supervisor.upgrade(join=True)
    queued = f.supervisor.upgrade()  # not refused: run after this one
    second = f.processes[-1]
    second.ready()
    f.clock.advance(probation)
    assert f.result(upgrade) == f.result(joined) == [second.pid]
    assert not queued.called
    assert f.processes[-1].generation == 3
    f.processes[-1].ready()
    f.clock.advance(probation)
    assert f.result(queued) == [f.processes[-1].pid]


def test_upgradesAskedForDuringProbationRunOnceAfterIt() -> None:
    """
    Every upgrade asked for while one runs (a HUP) is coalesced into one further
    upgrade, which starts when the current one ends; C{txflip upgrade} (join)
    waits for the one in progress; each caller learns the outcome of its own.
    """
    f = Fixture(workers=2, probation=5)
    f.started()
    upgrade, second = f.upgradeToProbation()
    asked = [f.supervisor.upgrade() for _ in range(3)]
    joined = f.supervisor.upgrade(join=True)  # the one in progress
    spawned = len(f.processes)
    f.clock.advance(4.9)
    assert len(f.processes) == spawned and not any(d.called for d in asked)
    f.clock.advance(0.1)
    assert f.result(upgrade) == f.result(joined) == [p.pid for p in second]
    third: list[FakeProcess] = []
    for _ in range(2):
        process = f.processes[-1]
        assert process.generation == 3 and process not in third
        third.append(process)
        process.ready()
    assert len(f.processes) == spawned + 2  # one upgrade, not three
    f.clock.advance(5)
    assert all(f.result(d) == [p.pid for p in third] for d in asked)
    assert all(p.signals == ["QUIT"] for p in second)
    f.clock.advance(60)
    assert len(f.processes) == spawned + 2
    status = f.supervisor.status()
    assert status["state"] == "serving" and status["generation"] == 3


def test_anUpgradeQueuedBehindARollbackStillRuns() -> None:
    f = Fixture(workers=1, probation=5)
    f.started()
    upgrade, (new,) = f.upgradeToProbation()
    queued = f.supervisor.upgrade()
    new.end(ProcessTerminated(exitCode=7))
    assert isinstance(f.result(upgrade), Failure)
    retry = f.processes[-1]
    assert retry is not new and retry.generation == 2  # the rolled-back one's
    retry.ready()
    f.clock.advance(5)
    assert f.result(queued) == [retry.pid]


def test_stoppingRefusesTheQueuedUpgrade() -> None:
    f = Fixture(workers=1, probation=5)
    f.started()
    upgrade, _ = f.upgradeToProbation()
    queued = f.supervisor.upgrade()
    f.supervisor.stop()
    for d in (upgrade, queued):
        failure = f.result(d)
        assert isinstance(failure, Failure) and failure.check(Stopping)


TAKEN = "OSError: [Errno 98] Address already in use"


@pytest.mark.parametrize(
    "workers, why, hint",
    [
        (2, TAKEN, True),
        (1, TAKEN, False),  # nobody of ours holds it
        # The supervisor's own bind of a flip: listener: a stranger holds it.
        (2, "cannot listen on tcp:127.0.0.1:80: address already in use", False),
    ],
)
def test_aPortTakenWhileAnotherWorkerRunsSaysHowToShareIt(
    workers: int, why: str, hint: bool
) -> None:
    f = Fixture(workers=workers, probation=0)
    f.supervisor.start()
    f.processes[-1].failBeforeReady(why)
    assert f.supervisor.failure == (f"{why}; {SHARE_PORT}" if hint else why)


def test_anUpgradesPortTakenByTheOldWorkerSaysHowToShareIt() -> None:
    f = Fixture(workers=1, probation=0)
    f.started()
    upgrade = f.supervisor.upgrade()
    f.processes[-1].failBeforeReady(TAKEN)
    failure = f.result(upgrade)
    assert isinstance(failure, Failure)
    assert failure.getErrorMessage() == f"{TAKEN}; {SHARE_PORT}"
