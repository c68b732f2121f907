"""
(g) HTTP: twistd web behind ``flip:`` against plain ``twistd web``, with wrk.

    python -m bench.web [--runs 8] [--seconds 3] [--upgrades 5] [--connections 50]

Steady state: both servers run side by side (``twistd -n web --listen tcp:PORT
--path bench/www``, and ``twistd -n flip web --listen flip:tcp:PORT --path
bench/www``), pinned to one CPU, and wrk (Debian's package, on the other CPU)
loads one at a time, alternating: requests/s for a 1.3 kB page on 32 keep-alive
connections.  "paired" is the median
of the ratios within each run.  Target: flip: >= 97% of plain.

Through upgrades: wrk on ``--connections`` keep-alive connections for the whole run
while the server is upgraded ``--upgrades`` times (SIGHUP, then wait for the new pid
and for the old one to exit).  wrk counts every connect, read, write and timeout
error and every non-2xx/3xx response; for flip: all must be 0.  The control, plain
twistd web restarted by a supervisor when SIGHUP kills it, shows what wrk sees when
an upgrade is not graceful.
"""

from __future__ import annotations

import math
import re
import shutil
import threading
import time
from typing import Any

from bench._common import (
    HOST,
    SERVER_CPU,
    header,
    median,
    ms,
    options,
    pin,
    runLoad,
    running,
    table,
)

_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)


def wrk(port: int, seconds: float, connections: int) -> dict[str, Any]:
    """Run wrk once; requests/s, requests, socket errors and bad statuses."""
    # wrk takes whole seconds only
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{math.ceil(seconds)}s", "--latency"]
    argv.append(f"http://{HOST}:{port}/index.html")
    out = runLoad(argv, seconds)
    found = _ERRORS.search(out)  # wrk prints the line only when there are errors
    counts = [int(n) for n in found.groups()] if found else [0, 0, 0, 0]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rate": float(_find(r"Requests/sec:\s+([\d.]+)", out)),
        "requests": int(_find(r"(\d+) requests in", out)),
        "errors": dict(
            zip(("connect", "read", "write", "timeout"), counts, strict=True)
        ),
        "bad_status": int(bad.group(1)) if bad else 0,
        "p99": _find(r"99%\s+(\S+)", out),
    }


def _find(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    if found is None:
        raise RuntimeError(f"bench: no {pattern!r} in wrk's output:\n{text}")
    return found.group(1)


def steady(runs: int, seconds: float) -> None:
    rates: dict[str, list[float]] = {"web": [], "flipweb": []}
    with running("web") as plain, running("flipweb") as flip:
        servers = {"web": plain, "flipweb": flip}
        for server in servers.values():
            pid = server.serving()
            assert pid is not None
            pin(pid, SERVER_CPU)
            wrk(server.port, 1, 32)  # warm up
        for run in range(runs):
            order = list(servers) if run % 2 == 0 else list(reversed(servers))
            for name in order:
                result = wrk(servers[name].port, seconds, 32)
                rates[name].append(result["rate"])
                if sum(result["errors"].values()) or result["bad_status"]:
                    print(f"   ({name}: errors in a steady run: {result})")
    paired = median(
        [f / p for f, p in zip(rates["flipweb"], rates["web"], strict=True)]
    )
    plainRate, flipRate = median(rates["web"]), median(rates["flipweb"])
    print(
        table(
            ["median", "twistd web", "flip: twistd web", "flip/plain", "paired"],
            [
                [
                    "requests/s",
                    f"{plainRate:,.0f}",
                    f"{flipRate:,.0f}",
                    f"{100 * flipRate / plainRate:.1f}%",
                    f"{100 * paired:.1f}%",
                ]
            ],
        )
    )
    spread = {n: f"{min(v):,.0f}-{max(v):,.0f}" for n, v in rates.items()}
    print(f"   range: plain {spread['web']}, flip: {spread['flipweb']}")


def throughUpgrades(name: str, upgrades: int, connections: int) -> list[object]:
    """wrk for the whole run while the server is upgraded; one table row."""
    spacing = 1.5
    seconds = math.ceil(spacing * (upgrades + 1))
    with running(name) as server:
        result: dict[str, Any] = {}
        load = threading.Thread(
            target=lambda: result.update(wrk(server.port, seconds, connections))
        )
        load.start()
        times: list[float] = []
        started = time.monotonic()
        for number in range(1, upgrades + 1):
            time.sleep(max(started + number * spacing - time.monotonic(), 0))
            _, _, gone = server.upgrade()
            times.append(gone)
        load.join(seconds + 60)
    errors = result["errors"]
    return [
        name,
        f"{result['requests']:,}",
        upgrades,
        ms(median(times)),
        *(errors.get(k, 0) for k in ("connect", "read", "write", "timeout")),
        result["bad_status"],
        result["p99"],
    ]


def main() -> None:
    args = options(__doc__, runs=8, seconds=3, upgrades=5, connections=50)
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is not installed (apt-get install wrk)")
    header(
        "(g) HTTP steady state: flip: twistd web vs plain twistd web (target >= 97%)",
        f"{args.runs} alternating wrk runs of {args.seconds:g} s per server,"
        " 32 keep-alive connections, a 1.3 kB page",
    )
    steady(args.runs, args.seconds)
    print()
    header(
        "(g) HTTP through upgrades: wrk's errors (target: 0 for flip:)",
        f"{args.connections} keep-alive connections, {args.upgrades} upgrades"
        " 1.5 s apart",
    )
    rows = [
        throughUpgrades(name, args.upgrades, args.connections)
        for name in ("flipweb", "naiveweb")
    ]
    headers = ["server", "requests", "upgrades", "old gone p50", "connect"]
    headers += ["read", "write", "timeout", "non-2xx/3xx", "p99 latency"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
