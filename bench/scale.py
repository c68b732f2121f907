"""
(e) Scale: upgrade and drain time of flipecho with 1, 10, 100 listeners and 0, 1,000,
5,000 open (idle) connections: how the cost grows.

    python -m bench.scale [--listeners 1,10,100] [--connections 0,1000,5000] [--runs 3]

For each combination: start flipecho with that many TCP listeners, open the
connections (spread over the listeners, each echoes one line so that the server has
accepted it), then SIGHUP and time SIGHUP -> new generation ready (the pid file) and
SIGHUP -> old generation gone.  Idle connections are closed when the idle grace (1 s,
flipecho's default) is over, so "drain" (ready -> old gone) is at least 1 s when
there are connections.  Raises its open-files limit (and so the server's).
"""

from __future__ import annotations

import re
import socket
import time

from bench._common import (
    HOST,
    header,
    median,
    ms,
    options,
    raiseNofile,
    readLine,
    running,
    table,
)

TIMEOUT = 150.0


def openConnections(ports: list[int], n: int) -> list[socket.socket]:
    socks = []
    for i in range(n):
        sock = socket.create_connection((HOST, ports[i % len(ports)]), 10)
        sock.sendall(b"x\n")
        socks.append(sock)
    for sock in socks:
        readLine(sock)
    return socks


def one(listeners: int, connections: int) -> tuple[float, float, float, int]:
    """(s to ready, s to old gone, s to connect everything, drained count)."""
    extra = ["tcp:0:interface=127.0.0.1"] * (listeners - 1)
    with running("flipecho", extra) as server:
        found = re.findall(r"listening on tcp:127\.0\.0\.1:(\d+)", server.log())
        ports = sorted({int(p) for p in found})
        assert len(ports) == listeners, (ports, server.log()[-2000:])
        started = time.monotonic()
        socks = openConnections(ports, connections)
        connect = time.monotonic() - started
        try:
            _, toNew, toGone = server.upgrade(TIMEOUT)
        finally:
            for sock in socks:
                sock.close()
        drained = re.findall(r"draining (\d+) connections", server.log())
        return toNew, toGone, connect, sum(int(n) for n in drained)


def main() -> None:
    args = options(__doc__, listeners="1,10,100", connections="0,1000,5000", runs=3)
    listenerCounts = [int(n) for n in args.listeners.split(",")]
    connectionCounts = [int(n) for n in args.connections.split(",")]
    limit = raiseNofile(2 * max(connectionCounts) + 1000)
    header(
        "(e) scale: upgrade and drain time vs listeners and open connections",
        f"{args.runs} runs each, idle connections, idle grace 1 s; open files {limit}",
    )
    rows = []
    for listeners in listenerCounts:
        for connections in connectionCounts:
            results = []
            for _ in range(args.runs):
                results.append(one(listeners, connections))
                if results[-1][1] > 20:  # slow: one run says enough
                    break
            toNew = median([r[0] for r in results])
            toGone = median([r[1] for r in results])
            row = [
                f"{listeners}",
                f"{connections}",
                ms(toNew),
                ms(toGone),
                ms(toGone - toNew),
                f"{max(r[3] for r in results)}",
                f"{len(results)}",
            ]
            rows.append(row)
            print("   " + "  ".join(row), flush=True)
    print()
    headers = ["listeners", "connections", "HUP->ready", "HUP->old gone"]
    headers += ["drain (ready->gone)", "drained", "runs"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
