"""
(w) ``txflip run --workers N``: how upgrade time, memory and throughput grow with N.

    python -m bench.workers [--counts 1,2,4,8] [--upgrades 3] [--seconds 3]
                            [--modes "exec=--no-preload fresh=--no-warm warm=--warm"]
                            [--app bench.bigapp.Hello]

For each mode (a set of extra ``txflip run`` arguments, ``NAME=ARG[,ARG...]``; a
mode whose options ``txflip run --help`` does not know is skipped, and with none
left, ``txflip run``'s default runs alone) and each N, one supervisor over N workers
of bench/hello.py's tiny twisted.web application (``twistd -n flip web --class
bench.hello.Hello``, ``--probation 0``), or ``--app``'s (bench/bigapp.py imports
and builds at import what a real application would):

  - ``txflip upgrade`` -> every new worker serving (its answer, sent as the last
    one is ready: polling the status every 5 ms, as SIGHUP would need, loaded
    the supervisor while it forked the workers, and took up to 3x as long with
    8 of them), and -> every old worker gone (their pids), medians of
    ``--upgrades`` upgrades;
  - memory, idle, after the upgrades: the PSS summed over the supervisor and every
    process below it (workers, templates, the zygote) (``/proc/PID/smaps_rollup``:
    shared pages counted once) and the RSS sum;
  - requests/s: one wrk run (50 keep-alive connections, ``--seconds``) on the load
    CPU, the workers unpinned (with 2 cores, N > 1 shares them with wrk);
  - each N's upgrade time over N=2's (the target of issue 27: N=8 within 1.5x).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench import _common
from bench._common import (
    family,
    header,
    ms,
    options,
    pssKib,
    rssKib,
    table,
)
from bench.supervisor import supervised, upgradeTimes
from bench.web import wrk

DEFAULT_MODES = "exec=--no-preload fresh=--no-warm warm=--warm"


@dataclass
class Figures:
    """One mode's figures for one number of workers."""

    toServing: float
    toGone: float
    pss: int
    rss: int
    rate: float


def parseModes(text: str) -> dict[str, list[str]]:
    """C{"NAME=ARG[,ARG...] ..."}: each mode's extra C{txflip run} arguments."""
    modes = {}
    for entry in text.split():
        name, _, args = entry.partition("=")
        modes[name] = [a for a in args.split(",") if a]
    return modes


def knownModes(modes: dict[str, list[str]]) -> dict[str, list[str]]:
    """
    The modes whose every option C{txflip run --help} lists; says which are
    skipped; C{txflip run}'s default alone if none is left.
    """
    helped = subprocess.run(
        [sys.executable, "-m", "txflip", "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(_common.CODE)},
    ).stdout
    known = set(helped.replace(",", " ").split())
    kept = {}
    for name, args in modes.items():
        unknown = [
            a for a in args if a.startswith("-") and a.split("=")[0] not in known
        ]
        if unknown:
            print(
                f"   mode {name} skipped: txflip run does not know {' '.join(unknown)}"
            )
        else:
            kept[name] = args
    if not kept:
        print("   no mode left: txflip run's default alone")
        kept = {"default": []}
    return kept


def measure(count: int, args: Sequence[str], upgrades: int, seconds: float) -> Figures:
    server = supervised(count, args, app="web")
    try:
        toServing, toGone = upgradeTimes(server, count, upgrades)
        time.sleep(1.0)  # idle
        pids = family(server.proc.pid)
        pss = sum(map(pssKib, pids))
        rss = sum(map(rssKib, pids))
        rate = wrk(server.port, seconds, 50)["rate"]
    finally:
        server.stop()
    return Figures(toServing, toGone, pss, rss, rate)


def main() -> None:
    args = options(
        __doc__,
        counts="1,2,4,8",
        upgrades=3,
        seconds=3,
        modes=DEFAULT_MODES,
        app=_common.WEB_APP,
    )
    _common.WEB_APP = args.app
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is not installed (apt-get install wrk)")
    counts = [int(n) for n in args.counts.split(",")]
    header(
        "(w) txflip run --workers N: upgrade time, memory and throughput",
        f"{args.app} (twisted.web); {args.upgrades} upgrades per N"
        f" (--probation 0), then idle memory, then wrk for {args.seconds:g} s",
    )
    modes = knownModes(parseModes(args.modes))
    print()
    rows = []
    for name, extra in modes.items():
        found = {n: measure(n, extra, args.upgrades, args.seconds) for n in counts}
        base = found.get(2, found[counts[0]]).toServing
        for n, f in found.items():
            rows.append(
                [
                    f"{name}, {n} worker(s)",
                    ms(f.toServing),
                    ms(f.toGone),
                    f"{f.pss / 1024:.1f}",
                    f"{f.rss / 1024:.1f}",
                    f"{f.rate:,.0f}",
                    f"{f.toServing / base:.2f}",
                ]
            )
    print(
        table(
            [
                "mode, N",
                "upgrade -> all new serving",
                "-> old gone",
                "PSS sum MiB",
                "RSS sum MiB",
                "requests/s",
                "upgrade / N=2's",
            ],
            rows,
        )
    )
    print(
        "   (medians; memory idle, the supervisor and all below it; requests/s: one"
        " wrk run, 50 keep-alive connections)"
    )


if __name__ == "__main__":
    main()
