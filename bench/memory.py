"""
(d) Memory: RSS of flipecho vs the plain Twisted echo server, idle and with 1,000
idle connections open.  Target: idle flipecho at most +3 MB over plain.

    python -m bench.memory [--runs 3] [--connections 1000]

Each run starts both servers (the order alternates), reads VmRSS from /proc once
they serve and have been idle for a second, then opens the connections to each
(every one echoes a line, so the server has built its protocol) and reads VmRSS
again.  After an upgrade, flipecho's new generation is measured too.
"""

from __future__ import annotations

import socket
import time

from bench._common import (
    HOST,
    header,
    median,
    options,
    raiseNofile,
    rssKib,
    running,
    table,
)


def connect(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        sock = socket.create_connection((HOST, port), 10)
        sock.sendall(b"x\n")
        socks.append(sock)
    for sock in socks:
        assert sock.recv(10) == b"x\n"
    return socks


def main() -> None:
    args = options(__doc__, runs=3, connections=1000)
    raiseNofile(4 * args.connections + 1000)
    header(
        "(d) memory: RSS of flipecho vs plain Twisted echo (target: idle <= +3 MB)",
        f"{args.runs} runs; VmRSS after 1 s idle, then with {args.connections}"
        " idle connections",
    )
    names = ("plain", "flipecho")
    idle: dict[str, list[int]] = {name: [] for name in names}
    busy: dict[str, list[int]] = {name: [] for name in names}
    upgraded: list[int] = []
    for run in range(args.runs):
        for name in names if run % 2 == 0 else tuple(reversed(names)):
            with running(name) as server:
                pid = server.serving()
                assert pid is not None
                time.sleep(1.0)
                idle[name].append(rssKib(pid))
                socks = connect(server.port, args.connections)
                time.sleep(0.5)
                busy[name].append(rssKib(pid))
                for sock in socks:
                    sock.close()
                if name == "flipecho":
                    new, _, _ = server.upgrade()
                    time.sleep(1.0)
                    upgraded.append(rssKib(new))
    mib = 1024.0
    rows = []
    for name in names:
        i, b = median(idle[name]), median(busy[name])
        per = (b - i) * 1024 / args.connections
        rows.append([name, f"{i / mib:.1f}", f"{b / mib:.1f}", f"{per / 1024:.1f} KiB"])
    rows.append(["flipecho, next generation", f"{median(upgraded) / mib:.1f}", "", ""])
    print(
        table(
            [
                "RSS, MiB (median)",
                "idle",
                f"{args.connections} connections",
                "per connection",
            ],
            rows,
        )
    )
    extraIdle = (median(idle["flipecho"]) - median(idle["plain"])) / mib
    extraBusy = (median(busy["flipecho"]) - median(busy["plain"])) / mib
    verdict = "met" if extraIdle <= 3 else "MISSED"
    print()
    print(
        f"   flipecho - plain: idle {extraIdle:+.1f} MiB (target <= +3 MB: {verdict}),"
        f" with {args.connections} connections {extraBusy:+.1f} MiB"
    )


if __name__ == "__main__":
    main()
