"""
Driving a check: run a load for a duration with upgrades spaced over it, showing
progress on a terminal.  Any kind of load (line echo, HTTP) runs through here.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import IO, Protocol

from txflip.check._pid import Upgrade
from txflip.check._stats import Counters


class _Progress:
    """
    The live progress line, on a terminal only.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.enabled = stream.isatty()

    def show(
        self, elapsed: float, duration: float, stats: Counters, upgrades: int
    ) -> None:
        if not self.enabled:
            return
        self._stream.write(
            f"\r{elapsed:5.1f}/{duration:.0f} s  connections {stats.connections}"
            f"  {stats.unit} {stats.exchanges}  errors {stats.errorsTotal()}"
            f"  lost {stats.lost}  upgrades {upgrades}\x1b[K"
        )
        self._stream.flush()

    def clear(self) -> None:
        if self.enabled:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def upgradeTimes(duration: float, n: int) -> list[float]:
    """When (seconds into the run) the C{n} upgrades are due: evenly spaced."""
    return [duration * (i + 1) / (n + 1) for i in range(n)]


class Loader(Protocol):
    """
    What L{run_load} drives: client threads that count into C{stats}.
    """

    @property
    def stats(self) -> Counters: ...

    def start(self) -> None: ...

    def stop(self) -> bool: ...


@dataclasses.dataclass
class Run:
    """
    What L{run_load} saw: how long the load ran, the upgrades, and whether every
    client thread stopped.
    """

    seconds: float
    upgrades: list[Upgrade]
    stopped: bool


def runLoad(
    load: Loader,
    *,
    upgradeOne: Callable[[int], Upgrade] | None,
    duration: float,
    upgrades: int,
    progress: IO[str] | None = None,
) -> Run:
    """
    Run C{load} for C{duration} seconds with C{upgrades} upgrades spaced over it,
    each done by C{upgrade_one(number)}.

    An upgrade due while the previous one still runs waits for it; one that cannot
    start before the end of the run is reported as not started.  An upgrade in
    progress at the end keeps the load running until it completes or times out.
    """
    assert upgradeOne is not None or upgrades == 0
    shown = _Progress(progress) if progress is not None else None
    done: list[Upgrade] = []
    start = time.monotonic()
    end = start + duration

    def upgrader() -> None:
        for number, due in enumerate(upgradeTimes(duration, upgrades), 1):
            now = time.monotonic()
            if now >= end or upgradeOne is None:
                return
            time.sleep(max(start + due - now, 0.0))
            done.append(upgradeOne(number))

    thread = threading.Thread(target=upgrader, name="txflip-check-upgrades")
    thread.daemon = True
    load.start()
    try:
        thread.start()
        while True:
            now = time.monotonic()
            if now >= end and not thread.is_alive():
                break
            if shown is not None:
                shown.show(now - start, duration, load.stats, len(done))
            wait = 0.25 if now >= end else max(min(0.25, end - now), 0.01)
            if thread.is_alive():
                thread.join(wait)
            else:  # join() would return at once: no busy loop stealing the GIL
                time.sleep(wait)
    finally:
        seconds = time.monotonic() - start
        stopped = load.stop()
        if shown is not None:
            shown.clear()
    return Run(seconds, list(done), stopped)
