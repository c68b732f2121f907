"""
(m) Moving connections to the new generation instead of closing them.

    python -m bench.moving [--runs 3] [--sizes 1000,10000] [--loss 200,2000]
                           [--upgrades 5]

1. Idle connections through one upgrade of flipecho, moving on (default) and off
   (--no-move: they drain, closed when the idle grace of 1 s ends): how long the
   move took (the old generation's log: first connection offered to last one
   accepted), per connection, and when the old generation exited (after SIGHUP,
   and after the new one was ready); how many clients saw their connection closed.
2. The idle-client loss scenario: N connections, each silent for a random time
   (0 to 2 s, around the idle grace) then sending a line; through several
   upgrades, messages lost (sent, never echoed: the connection closed or reset
   under it; a client reconnects, as a real one would), with and without moving.

Clients are tests/talkers.py (one selector thread for all connections).
tableflip's Go demo is not measured here (see README: not built, time).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from bench._common import (
    HOST,
    header,
    median,
    ms,
    options,
    raiseNofile,
    running,
    table,
    waitUntil,
)
from tests.talkers import Talkers  # tests/, on the path since _common

MOVED = re.compile(r"moved (\d+) connections to pid \d+ in ([\d.]+) ms")


def _connections(pid: int) -> int:
    return sum(
        1
        for fd in os.listdir(f"/proc/{pid}/fd")
        if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    )


def idle(n: int, move: bool) -> dict[str, Any]:
    flags = [] if move else ["--no-move"]
    with running("flipecho", options=["--idle-grace", "1", *flags]) as server:
        talkers = Talkers(HOST, server.port, n, idle=(3600.0, 3600.0)).start()
        try:
            pid = server.serving()
            assert pid is not None
            waitUntil(f"{n} connections", lambda: _connections(pid) >= n, 60)
            _, toNew, toGone = server.upgrade(timeout=120)
            time.sleep(0.2)  # let closes reach the clients
            closed = talkers.stats.closed + talkers.stats.errors
        finally:
            talkers.stop()
        found = MOVED.search(server.log())
    moved, took = (int(found[1]), float(found[2]) / 1000) if found else (0, 0.0)
    return {
        "moved": moved,
        "took": took,
        "toNew": toNew,
        "toGone": toGone,
        "closed": closed,
    }


def loss(n: int, move: bool, upgrades: int) -> dict[str, Any]:
    flags = [] if move else ["--no-move"]
    with running("flipecho", options=["--idle-grace", "1", *flags]) as server:
        with Talkers(HOST, server.port, n, idle=(0.0, 2.0), reconnect=True) as t:
            time.sleep(2.0)
            for _ in range(upgrades):
                server.upgrade(timeout=60)
                time.sleep(0.5)
            time.sleep(2.5)  # every connection talks once more
        stats = t.stats
    return {"lost": stats.lost, "exchanges": stats.exchanges, "closed": stats.closed}


def main() -> None:
    args = options(__doc__, runs=3, sizes="1000,10000", loss="200,2000", upgrades=5)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    losses = [int(s) for s in args.loss.split(",") if s]
    limit = raiseNofile(2 * max(sizes + losses, default=0) + 1000)
    header(
        "moving connections vs draining them (flipecho, idle grace 1 s)",
        f"open-files limit {limit}; medians of {args.runs} runs",
    )
    rows = []
    for n in sizes:
        for move in (True, False):
            runs = [idle(n, move) for _ in range(args.runs)]
            took = median([r["took"] for r in runs])
            rows.append(
                [
                    f"{n} idle, {'moving' if move else 'draining (--no-move)'}",
                    median([r["moved"] for r in runs]),
                    ms(took) if move else "-",
                    f"{took * 1e6 / n:.1f}" if move else "-",
                    ms(median([r["toGone"] for r in runs])),
                    ms(median([r["toGone"] - r["toNew"] for r in runs])),
                    median([r["closed"] for r in runs]),
                ]
            )
    print(
        table(
            [
                "",
                "moved",
                "move took",
                "µs/conn",
                "HUP->old gone",
                "ready->old gone",
                "clients closed",
            ],
            rows,
        )
    )
    print()
    rows = []
    for n in losses:
        for move in (True, False):
            runs = [loss(n, move, args.upgrades) for _ in range(args.runs)]
            lost = [r["lost"] for r in runs]
            rows.append(
                [
                    f"{n} idle talking, {'moving' if move else 'draining'}",
                    args.upgrades,
                    median([r["exchanges"] for r in runs]),
                    median([r["closed"] for r in runs]),
                    f"{median(lost)} (runs: {', '.join(map(str, lost))})",
                ]
            )
    print(
        table(
            ["", "upgrades", "messages", "closed by server", "lost (median)"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
