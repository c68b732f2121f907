"""
(b) Steady-state cost: flipecho vs the plain Twisted echo server (same protocol,
plain ``listenTCP``, no txflip).  Target: flipecho >= 97% of plain.

    python -m bench.steady [--runs 10] [--seconds 2.5]

Both servers run side by side; bench/loadgen.py (one epoll process) loads one at a
time, alternating, as fast as it can: connections/s (connect, one line, its echo,
close; 32 in flight) and lines/s (64 long-lived connections in lock step).  The
server's CPU time per operation comes from /proc (it depends on how busy the server
is: a busier server handles more events per poll).  "paired" is the median of the
ratios within each run (both servers measured back to back), steadier than the
ratio of the medians.  With 2 CPUs, the servers are pinned to one and the load
generator to the other.

Last, in-process and precise: what txflip adds to one connection's life (build,
connect, one line, half-close, close) through its ConnectionTracker, against the
same protocol from a plain Factory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench import _common
from bench._common import (
    BENCH,
    SERVER_CPU,
    cpuSeconds,
    header,
    median,
    options,
    pin,
    runLoad,
    running,
    table,
)

MODES = {"connections": 32, "lines": 64}


def load(mode: str, port: int, pid: int, seconds: float) -> tuple[float, float]:
    """Run the load generator once: (operations per second, server CPU s per op)."""
    concurrency = MODES[mode]
    argv = [sys.executable, str(BENCH / "loadgen.py"), mode, str(port)]
    argv += [str(seconds), str(concurrency)]
    before = cpuSeconds(pid)
    out = runLoad(argv, seconds)
    cpu = cpuSeconds(pid) - before
    result = json.loads(out)
    if result["errors"]:
        print(f"   ({result['errors']} errors in a {mode} run)")
    return result["ops"] / result["seconds"], cpu / max(result["ops"], 1)


def main() -> None:
    args = options(__doc__, runs=10, seconds=2.5)
    header(
        "(b) steady state: flipecho vs plain Twisted echo (target >= 97%)",
        f"{args.runs} alternating runs of {args.seconds:g} s per server and mode",
    )
    rows = []
    with running("plain") as plain, running("flipecho") as flip:
        servers = {"plain": plain, "flipecho": flip}
        for mode in MODES:
            rates: dict[str, list[float]] = {name: [] for name in servers}
            costs: dict[str, list[float]] = {name: [] for name in servers}
            for server in servers.values():  # warm up
                pid = server.serving()
                assert pid is not None
                pin(pid, SERVER_CPU)
                load(mode, server.port, pid, 0.5)
            for run in range(args.runs):
                order = list(servers) if run % 2 == 0 else list(reversed(servers))
                for name in order:
                    server = servers[name]
                    pid = server.serving()
                    assert pid is not None
                    rate, cost = load(mode, server.port, pid, args.seconds)
                    rates[name].append(rate)
                    costs[name].append(cost)
            unit = "connections/s" if mode == "connections" else "lines/s"
            plainRate, flipRate = median(rates["plain"]), median(rates["flipecho"])
            plainCost, flipCost = median(costs["plain"]), median(costs["flipecho"])
            # Each run measured both servers back to back: compare within runs.
            paired = median(
                [f / p for f, p in zip(rates["flipecho"], rates["plain"], strict=True)]
            )
            rows.append(
                [
                    unit,
                    f"{plainRate:,.0f}",
                    f"{flipRate:,.0f}",
                    f"{100 * flipRate / plainRate:.1f}%",
                    f"{100 * paired:.1f}%",
                    f"{plainCost * 1e6:.1f}",
                    f"{flipCost * 1e6:.1f}",
                    f"{100 * plainCost / flipCost:.1f}%",
                ]
            )
            spread = {
                name: f"{min(values):,.0f}-{max(values):,.0f}"
                for name, values in rates.items()
            }
            print(f"   {unit}: range plain {spread['plain']},"
                  f" flipecho {spread['flipecho']}")  # fmt: skip
    print()
    headers = ["median", "plain", "flipecho", "flip/plain", "paired"]
    headers += ["plain CPU us/op", "flip CPU us/op", "plain/flip CPU"]
    print(table(headers, rows))
    print()
    plainUs, trackedUs = connectionLife()
    print(
        f"   one connection's life in-process: plain Factory {plainUs:.2f} us,"
        f" txflip ConnectionTracker {trackedUs:.2f} us:"
        f" txflip adds {trackedUs - plainUs:.2f} us per connection"
    )


def connectionLife() -> tuple[float, float]:
    """Microseconds per connection's life: (plain factory, txflip tracker)."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "connection_life.py")],
        env={**os.environ, "PYTHONPATH": str(_common.CODE)},
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout)
    return result["plain"], result["tracked"]


if __name__ == "__main__":
    main()
