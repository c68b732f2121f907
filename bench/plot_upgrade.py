"""
(f) The picture of one upgrade: connections served per 10 ms, coloured by the pid
that served them, with SIGHUP, "new generation ready" and "old generation exited"
marked.  Needs matplotlib (``pip install '.[bench]'``).

    python -m bench.plot_upgrade [--out bench/upgrade.png] [--clients 4]

The server is bench/pidecho.py (flipecho that answers each line with its pid, txflip
used as a library); short-lived clients (connect, one line, close) run throughout.
Also prints the longest time without any connection served, and errors (there
should be none).
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import threading
import time
from pathlib import Path

from bench._common import (
    BENCH,
    HOST,
    header,
    options,
    pidAlive,
    readLine,
    readPidFile,
    running,
)

BIN = 0.010
BEFORE, AFTER = 0.3, 0.3


class Clients:
    def __init__(self, port: int, n: int) -> None:
        self.port = port
        self.served: list[tuple[float, int]] = []
        self.errors: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(n)]
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with socket.create_connection((HOST, self.port), 5) as sock:
                    sock.sendall(b"x\n")
                    data = readLine(sock)
                self.served.append((time.monotonic(), int(data)))
            except (OSError, ValueError) as e:
                self.errors.append((time.monotonic(), repr(e)))

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


def main() -> None:
    args = options(__doc__, out=str(BENCH / "upgrade.png"), clients=4)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("bench: needs matplotlib: pip install '.[bench]'") from None
    header("(f) one upgrade, connection by connection")
    with running("pidecho") as server:
        old = server.serving()
        assert old is not None
        clients = Clients(server.port, args.clients)
        time.sleep(BEFORE + 0.5)
        hup = time.monotonic()
        os.kill(old, signal.SIGHUP)
        ready = gone = 0.0
        new = None
        while not gone and time.monotonic() - hup < 30:
            now = time.monotonic()
            pid = readPidFile(server.pidfile)
            if not ready and pid not in (None, old) and pidAlive(pid):
                ready, new = now, pid
            if not pidAlive(old):
                gone = now
            time.sleep(0.001)  # a tighter loop takes the GIL from the clients
        time.sleep(AFTER)
        clients.close()
    if not (ready and gone):
        raise SystemExit("bench: the upgrade did not complete")
    start, end = hup - BEFORE, gone + AFTER
    served = [(t - hup, pid) for t, pid in clients.served if start <= t <= end]
    times = sorted(t for t, _ in served)
    gap = max(b - a for a, b in itertools.pairwise(times))
    bins = int((end - start) / BIN) + 1
    counts = {pid: [0] * bins for pid in (old, new)}
    for t, pid in served:
        counts.setdefault(pid, [0] * bins)[int((t + BEFORE) / BIN)] += 1
    edges = [-BEFORE + i * BIN for i in range(bins)]

    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    bottom = [0] * bins
    colours = {old: "#4C72B0", new: "#DD8452"}
    for pid, values in counts.items():
        label = f"pid {pid} ({'old' if pid == old else 'new'})"
        ax.bar(edges, values, width=BIN, bottom=bottom, align="edge",
               color=colours.get(pid, "grey"), label=label)  # fmt: skip
        bottom = [a + b for a, b in zip(bottom, values, strict=True)]
    for when, text, style in (
        (0.0, "SIGHUP", "-"),
        (ready - hup, "new ready", "--"),
        (gone - hup, "old exited", ":"),
    ):
        ax.axvline(when, color="black", linestyle=style, linewidth=1)
        ax.text(when, max(bottom) * 1.02, f" {text}", fontsize=8, va="bottom")
    for t, _ in clients.errors:
        if start <= t <= end:
            ax.axvline(t - hup, color="red", linewidth=0.5)
    ax.set_xlabel("seconds from SIGHUP")
    ax.set_ylabel("connections served / 10 ms")
    ax.set_ylim(0, max(bottom) * 1.15)
    ax.set_xlim(-BEFORE, end - hup)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(
        f"one flipecho upgrade under {args.clients} short-lived clients:"
        f" {len(clients.errors)} errors, longest gap {gap * 1000:.0f} ms",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(args.out)
    print(
        f"   SIGHUP -> new ready {(ready - hup) * 1000:.0f} ms,"
        f" -> old exited {(gone - hup) * 1000:.0f} ms;"
        f" {len(served)} connections served in the window"
        f" ({sum(counts[old])} by the old pid, {sum(counts[new])} by the new),"
        f" {len(clients.errors)} errors; longest time without a connection served:"
        f" {gap * 1000:.1f} ms"
    )
    print(f"   saved {Path(args.out)}")


if __name__ == "__main__":
    main()
