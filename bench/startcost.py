"""
(i) What C{import txflip} costs a server, and its upgrades, in one run.

    python -m bench.startcost [--against REV] [--runs 15]

Interleaved, each --runs times, for the checkout (and a snapshot of REV if given):

  - C{import txflip} in a fresh interpreter: its own import time
    (C{-X importtime}, cumulative) and how many modules it leaves loaded;
  - a flipecho cold start: exec C{twistd -n flipecho} -> the pid file names it
    (what a direct-mode upgrade waits for, beside the handoff);
  - SIGHUP to a running C{twistd -n flipecho} -> its new generation is ready
    (the pid file names it): the cold start plus the handoff;
  - a bare C{twistd -n} start of the plain echo server (L{bench.plain_echo}), the
    floor of all three, two ways: as a twistd plugin (C{twistd -n plainecho}: twistd
    first scans every C{twisted/plugins} directory, as it does for flipecho, a plugin
    too) and from a C{.tac} (C{-y}: no scan, about 10 ms less).  Target: HUP -> ready
    within 10 ms of the plugin's start, the same kind of start; the C{.tac}'s is
    shown beside it.

The txflip code under test is byte-compiled first (C{compileall}, into its own
C{__pycache__}), as C{pip install} does: the bare start loads Twisted from its
bytecode, and with C{PYTHONDONTWRITEBYTECODE} set (as it may be in a checkout's
environment) every start would otherwise compile txflip from source, about
30 ms that no installed server pays.
"""

from __future__ import annotations

import atexit
import compileall
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import _common
from bench._common import (
    BenchError,
    Running,
    header,
    median,
    ms,
    options,
    resolve,
    snapshot,
    start,
    table,
)
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


def byteCompile(code: Path) -> None:
    """
    Compile the package and its twistd plugins in C{code}, as an install does.
    """
    for tree in ("txflip", "twisted/plugins"):
        if not compileall.compile_dir(code / tree, quiet=1):
            raise BenchError(f"cannot byte-compile {code / tree}")


def main() -> None:
    args = options(__doc__, runs=15, against="")
    codes = {_common.codeName(): _common.CODE}
    if args.against:
        before = Path(tempfile.mkdtemp(prefix="txflip-bench-src-"))
        atexit.register(shutil.rmtree, before, ignore_errors=True)
        snapshot(args.against, before)
        codes = {f"commit {resolve(args.against)}": before, **codes}
    for code in codes.values():
        byteCompile(code)
    header(
        "(i) import txflip, a flipecho cold start and HUP -> ready"
        + (", against an earlier commit" if args.against else ""),
        f"{args.runs} interleaved runs of each, idle machine; txflip byte-compiled",
    )
    imports: dict[str, list[float]] = {name: [] for name in codes}
    modules: dict[str, int] = {}
    starts: dict[str, list[float]] = {name: [] for name in codes}
    upgrades: dict[str, list[float]] = {name: [] for name in codes}
    plain: list[float] = []
    plugin: list[float] = []
    servers: dict[str, Running] = {}
    try:
        for name, code in codes.items():
            _common.CODE = code  # every generation of this server imports it
            servers[name] = start("flipecho")
        for _ in range(args.runs):
            plain.append(coldStart("plain"))
            plugin.append(coldStart("plainplugin"))
            for name, code in codes.items():
                seconds, modules[name] = importTxflip(code)
                imports[name].append(seconds)
                _common.CODE = code
                starts[name].append(coldStart("flipecho"))
                upgrades[name].append(servers[name].upgrade()[1])
    finally:
        for server in servers.values():
            server.stop()
    rows = [
        ["bare start: twistd -n plainecho", ms(median(plugin)), "", "", ""],
        ["bare start: twistd -n -y plain_echo.tac", ms(median(plain)), "", "", ""],
    ]
    for name in codes:
        rows.append(
            [
                f"txflip from {name}",
                ms(median(starts[name])),
                ms(median(upgrades[name])),
                ms(median(imports[name])),
                str(modules[name]),
            ]
        )
    print(
        table(
            [
                "median of runs",
                "flipecho cold start",
                "HUP -> ready",
                "import txflip",
                "modules after it",
            ],
            rows,
        )
    )
    hupReady = median(upgrades[_common.codeName()])
    over = hupReady - median(plugin)
    verdict = "met" if over <= 0.010 else "MISSED"
    print()
    print(
        f"   HUP -> ready - bare plugin start: {over * 1000:+.0f} ms"
        f" (target <= 10 ms: {verdict});"
        f" - bare .tac start: {(hupReady - median(plain)) * 1000:+.0f} ms"
    )


if __name__ == "__main__":
    main()
