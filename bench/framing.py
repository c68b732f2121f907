"""
(i) The cost of txflip's tracking on a LineReceiver echo: messages/s, side by side.

Two copies of one server, a C{LineReceiver} subclass that writes every line back
(the kind txflip now drains and moves with no code of the user's): one listening
with the application's factory alone, one with that factory behind txflip's
L{ConnectionTracker} (as C{UpgradeService.listen} serves it, with the framing
adapters registered by C{import txflip}).  Clients keep C{connections} lock-step
connections, each writing C{depth} lines at once and waiting for their echoes
before the next write; the servers are measured in turn, for C{seconds} each,
over C{rounds} rounds.  Printed: the median messages/s of each, and the ratio
(target: at least 97 %).

    python -m bench.framing [--rounds 5] [--seconds 3] [--connections 8] [--depth 1]
"""

from __future__ import annotations

import selectors
import socket
import statistics
import subprocess
import sys
import time

from bench._common import HOST, PORT, header, listeningServer, options, table

SERVER = """
import sys
from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

class Echo(LineReceiver):
    delimiter = b"\\n"

    def lineReceived(self, line):
        self.sendLine(line)

factory = Factory.forProtocol(Echo)
if sys.argv[1] == "tracked":
    import txflip
    from txflip.drain._tracker import ConnectionTracker

    factory = ConnectionTracker(factory, reactor)
reactor.listenTCP(int(sys.argv[2]), factory, interface="127.0.0.1")
reactor.run()
"""

LINE = b"x" * 40 + b"\n"


def measure(port: int, seconds: float, connections: int, depth: int) -> float:
    """
    Messages echoed per second by the server on C{port}.
    """
    selector = selectors.DefaultSelector()
    socks = []
    burst = LINE * depth
    for index in range(connections):
        sock = socket.create_connection((HOST, port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        socks.append(sock)
        selector.register(sock, selectors.EVENT_READ, [0, index])
        sock.sendall(burst)
    echoed = 0
    end = time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < end:
        for key, _ in selector.select(1.0):
            sock, got = socks[key.data[1]], key.data
            data = sock.recv(65536)
            if not data:
                raise SystemExit("bench: the server closed a connection")
            got[0] += data.count(b"\n")
            if got[0] >= depth:
                echoed += depth
                got[0] -= depth
                sock.sendall(burst)
    took = time.monotonic() - started
    for sock in socks:
        selector.unregister(sock)
        sock.close()
    selector.close()
    return echoed / took


def main() -> None:
    args = options(__doc__, rounds=5, seconds=3.0, connections=8, depth=1)
    header(
        "(i) LineReceiver echo: messages/s without and with txflip's tracking",
        f"{args.rounds} rounds x {args.seconds:g} s per server, {args.connections}"
        f" connections, {args.depth} line(s) per write",
    )
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for mode in ("plain", "tracked"):
            servers[mode] = listeningServer(
                [sys.executable, "-c", SERVER, mode, PORT], f"the {mode} server"
            )
        rates: dict[str, list[float]] = {mode: [] for mode in servers}
        for _ in range(args.rounds):
            for mode, (_, port) in servers.items():
                rate = measure(port, args.seconds, args.connections, args.depth)
                rates[mode].append(rate)
        plain = statistics.median(rates["plain"])
        rows = [
            [
                mode,
                f"{statistics.median(values):,.0f}",
                f"{min(values):,.0f} .. {max(values):,.0f}",
                f"{100 * statistics.median(values) / plain:.1f} %",
            ]
            for mode, values in rates.items()
        ]
        print(table(["server", "messages/s (median)", "rounds", "vs plain"], rows))
    finally:
        for proc, _ in servers.values():
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
