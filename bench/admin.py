"""
(i) What scraping the admin endpoint costs the serving path: flipecho's lines/s with
and without a C{GET /metrics} every 100 ms.  Target: <= 1% fewer lines/s.

    python -m bench.admin [--runs 10] [--seconds 2.5]

One flipecho with C{--admin}; bench/loadgen.py drives 64 long-lived connections in
lock step (as bench.steady's lines/s), alternating runs with and without a scraper:
a thread of this process, one request every 100 ms on one keep-alive connection (as
Prometheus scrapes), a raw socket so that the client's own CPU (on the load
generator's CPU: a 2-core machine has no spare one) stays small.  "paired" is the
median of the ratios of runs measured back to back.  Last, the server's CPU per
scrape with no other load, on a keep-alive connection and on a new one each time.
"""

from __future__ import annotations

import json
import socket
import sys
import threading

from bench import _common
from bench._common import BENCH, median, runLoad

CONCURRENCY = 64
INTERVAL = 0.1


REQUEST = b"GET /metrics HTTP/1.1\r\nHost: bench\r\nAccept: text/plain\r\n\r\n"


class Scraper(threading.Thread):
    """
    GET /metrics every C{INTERVAL} s until stopped, on one keep-alive connection
    (C{keepAlive}) or a new one each time; counts the scrapes.
    """

    def __init__(self, port: int, keepAlive: bool = True) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.keepAlive = keepAlive
        self.sock: socket.socket | None = None
        self.done = threading.Event()
        self.scrapes = 0

    def run(self) -> None:
        # Off the server's CPU, as a Prometheus server would be: we measure the
        # server's cost, not our own.
        _common.pin(0, _common.LOAD_CPU)
        while not self.done.wait(INTERVAL):
            self.scrape()
        if self.sock is not None:
            self.sock.close()

    def scrape(self) -> None:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        received = b""
        self.sock.sendall(REQUEST)
        while b"\r\n\r\n" not in received:
            received += self.sock.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += self.sock.recv(65536)
        self.scrapes += 1
        if not self.keepAlive:
            self.sock.close()
            self.sock = None


def cpuPerScrape(pid: int, port: int, keepAlive: bool, count: int = 500) -> float:
    """The server's CPU seconds per scrape, with no other load."""
    scraper = Scraper(port, keepAlive)
    before = _common.cpuSeconds(pid)
    for _ in range(count):
        scraper.scrape()
    return (_common.cpuSeconds(pid) - before) / count


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
        perScrape = {
            how: cpuPerScrape(pid, admin, how == "keep-alive")
            for how in ("keep-alive", "a new connection each")
        }
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
    for how, cpu in perScrape.items():
        print(
            f"   the server's CPU per scrape, alone, {how}: {cpu * 1e6:,.0f} us"
            f" ({cpu / INTERVAL:.2%} of one CPU at one scrape per"
            f" {INTERVAL * 1000:g} ms)"
        )


if __name__ == "__main__":
    main()
