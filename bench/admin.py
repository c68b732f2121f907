"""
(i) What scraping the admin endpoint costs the serving path: flipecho's lines/s with
and without a C{GET /metrics} every 100 ms.  Target: <= 1% fewer lines/s.

    python -m bench.admin [--runs 10] [--seconds 2.5]

One flipecho with C{--admin}; bench/loadgen.py drives 64 long-lived connections in
lock step (as bench.steady's lines/s), alternating runs with and without a scraper
(a thread of this process: one HTTP request every 100 ms on a new connection each
time; Prometheus keeps its connection alive, so this is the costlier case).  "paired" is
the median of the ratios of runs measured back to back.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.request

from bench import _common
from bench._common import BENCH, median, runLoad

CONCURRENCY = 64
INTERVAL = 0.1


class Scraper(threading.Thread):
    """GET /metrics every C{INTERVAL} s until stopped; counts the scrapes."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.done = threading.Event()
        self.scrapes = 0
        self.size = 0

    def run(self) -> None:
        while not self.done.wait(INTERVAL):
            with urllib.request.urlopen(self.url, timeout=5) as response:
                self.size = len(response.read())
            self.scrapes += 1


def lines(port: int, seconds: float, scrapeAt: int | None) -> tuple[float, int]:
    """One load run: (lines/s, scrapes done meanwhile)."""
    scraper = Scraper(scrapeAt) if scrapeAt is not None else None
    if scraper is not None:
        scraper.start()
    try:
        argv = [sys.executable, str(BENCH / "loadgen.py"), "lines", str(port)]
        out = runLoad([*argv, str(seconds), str(CONCURRENCY)], seconds)
    finally:
        if scraper is not None:
            scraper.done.set()
            scraper.join()
    result = json.loads(out)
    if result["errors"]:
        print(f"   ({result['errors']} errors)")
    return result["ops"] / result["seconds"], scraper.scrapes if scraper else 0


def main() -> None:
    args = _common.options(__doc__, runs=10, seconds=2.5)
    _common.header(
        "(i) the admin endpoint: lines/s with and without /metrics every 100 ms"
        " (target <= 1% cost)",
        f"{args.runs} alternating runs of {args.seconds:g} s each",
    )
    admin = _common.freePort()
    flags = ["--admin", f"tcp:{admin}:interface=127.0.0.1"]
    with _common.running("flipecho", options=flags) as server:
        pid = server.serving()
        assert pid is not None
        _common.pin(pid, _common.SERVER_CPU)
        lines(server.port, 0.5, admin)  # warm up (and import prometheus_client)
        rates: dict[str, list[float]] = {"without": [], "with": []}
        scrapes = []
        for run in range(args.runs):
            order = ["without", "with"] if run % 2 == 0 else ["with", "without"]
            for name in order:
                rate, n = lines(
                    server.port, args.seconds, admin if name == "with" else None
                )
                rates[name].append(rate)
                if n:
                    scrapes.append(n / args.seconds)
        paired = median(
            [w / o for w, o in zip(rates["with"], rates["without"], strict=True)]
        )
        without, withScrapes = median(rates["without"]), median(rates["with"])
    rows = [
        [
            "lines/s",
            f"{without:,.0f}",
            f"{withScrapes:,.0f}",
            f"{100 * (1 - withScrapes / without):+.2f}%",
            f"{100 * (1 - paired):+.2f}%",
            f"{median(scrapes):.1f}",
        ]
    ]
    print(_common.table(["median", "no scrape", "scrape/100 ms", "cost", "paired cost",
                 "scrapes/s"], rows))  # fmt: skip
    for name, values in rates.items():
        print(f"   {name} scrapes: range {min(values):,.0f}-{max(values):,.0f}")


if __name__ == "__main__":
    main()
