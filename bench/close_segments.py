"""
(h) Does a lock-step client see the close with the reply?

A draining connection is closed with the reply to its next request.  If the reply
and the FIN leave in two segments, a lock-step client can read the reply before
the FIN arrives and send its next request into a connection that is closing: that
request is lost.  txflip corks the socket before such a close (txflip/drain/_cork.py) so
that both leave in one segment.

Two servers side by side, alternating in rounds: flipecho's Echo, every connection
draining (closed with its first reply), with the cork and without it (the same
code with the cork switched off).  A client connects, sends a line, reads the
echo, and looks at once (no waiting) whether the close has arrived too.  Printed:
the share of closes the client saw with the reply, median over the rounds.

    python -m bench.close_segments [--rounds 5] [--connections 1000]
"""

from __future__ import annotations

import select
import socket
import statistics
import sys

from bench import _common
from bench._common import (
    HOST,
    PORT,
    header,
    listeningServer,
    options,
    readLine,
    table,
)


def closeSeenWithReply(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"x\n")
        readLine(s)
        readable, _, _ = select.select([s], [], [], 0)
        if not readable:
            return False
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""


def main() -> None:
    args = options(__doc__, rounds=5, connections=1000)
    header(
        "(h) close seen with the reply, lock-step client on 127.0.0.1",
        f"{args.rounds} rounds x {args.connections} connections per server",
    )
    servers = {}
    try:
        for mode in ("on", "off"):
            servers[mode] = listeningServer(
                [sys.executable, str(_common.CODE / "tests" / "drainingecho.py"), PORT]
                + ([] if mode == "on" else ["nocork"]),
                f"the server with the cork {mode}",
            )
        shares: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(args.rounds):
            for mode, (_, port) in servers.items():
                seen = sum(closeSeenWithReply(port) for _ in range(args.connections))
                shares[mode].append(100.0 * seen / args.connections)
        rows = [
            [
                f"cork {mode}" + (" (txflip)" if mode == "on" else " (before)"),
                f"{statistics.median(values):.1f} %",
                f"{min(values):.1f} .. {max(values):.1f} %",
            ]
            for mode, values in shares.items()
        ]
        print(table(["server", "close seen with the reply", "rounds"], rows))
    finally:
        for proc, _ in servers.values():
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
