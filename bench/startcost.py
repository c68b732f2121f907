"""
(i) What C{import txflip} costs a server, against an earlier commit, in one run.

    python -m bench.startcost --against REV [--runs 15]

Interleaved, each --runs times, for the checkout and a snapshot of REV:

  - C{import txflip} in a fresh interpreter: its own import time
    (C{-X importtime}, cumulative) and how many modules it leaves loaded;
  - a flipecho cold start: exec C{twistd -n flipecho} -> the pid file names it
    (what a direct-mode upgrade waits for, beside the handoff);
  - a bare C{twistd -n} start of the plain echo server, the floor of both.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import _common
from bench._common import header, median, ms, options, resolve, snapshot, table
from bench.latency import coldStart

_PROBE = "import sys, txflip; print(len(sys.modules))"


def importTxflip(code: Path) -> tuple[float, int]:
    """
    Seconds C{import txflip} takes (its cumulative import time), and the
    number of modules loaded after it.
    """
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _PROBE],
        env={**os.environ, "PYTHONPATH": str(code)},
        cwd=code,  # -c looks in the working directory first
        capture_output=True,
        text=True,
        check=True,
    )
    last = [line for line in result.stderr.splitlines() if line.endswith("| txflip")]
    micros = int(last[-1].split("|")[1])
    return micros / 1e6, int(result.stdout)


def main() -> None:
    args = options(__doc__, runs=15, against="")
    if not args.against:
        sys.exit("bench.startcost: --against REV is required")
    before = Path(tempfile.mkdtemp(prefix="txflip-bench-src-"))
    atexit.register(shutil.rmtree, before, ignore_errors=True)
    snapshot(args.against, before)
    codes = {f"commit {resolve(args.against)}": before, "the checkout": _common.CODE}
    header(
        "(i) import txflip and a flipecho cold start, against an earlier commit",
        f"{args.runs} interleaved runs of each, idle machine",
    )
    imports: dict[str, list[float]] = {name: [] for name in codes}
    modules: dict[str, int] = {}
    starts: dict[str, list[float]] = {name: [] for name in codes}
    plain: list[float] = []
    for _ in range(args.runs):
        plain.append(coldStart("plain"))
        for name, code in codes.items():
            seconds, modules[name] = importTxflip(code)
            imports[name].append(seconds)
            _common.CODE = code
            starts[name].append(coldStart("flipecho"))
    rows = [["bare start: twistd -n plain echo", ms(median(plain)), "", ""]]
    for name in codes:
        rows.append(
            [
                f"txflip from {name}",
                ms(median(starts[name])),
                ms(median(imports[name])),
                str(modules[name]),
            ]
        )
    print(
        table(
            [
                "median of runs",
                "flipecho cold start",
                "import txflip",
                "modules after it",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
