"""
HTTP load for C{txflip check --http}: short-lived clients (one request per
connection), keep-alive clients (many requests on one connection) and, optionally,
upload clients (keep-alive POSTs whose body goes out in pieces, so that some are
mid-upload when an upgrade starts).

Like the line-echo clients they are plain threads with blocking sockets, and count
into counters of their own kind (L{HTTPStats}); the run loop and the report are the
line-echo check's.
"""

from __future__ import annotations

import dataclasses
import functools
import select
import socket
from collections.abc import Callable
from typing import ClassVar

from txflip.check._clients import Clients
from txflip.check._httpexchange import Exchange, Outcome, Target
from txflip.check._stats import Counters, Latencies, classify

#: What a user would call a failure.  C{cut_short}: fewer body bytes than the
#: C{Content-Length}, or a broken chunked body; C{dropped}: the connection closed
#: with no response to a request sent; C{bad_status}: a status not expected.
HTTP_ERROR_KINDS = (
    "refused",
    "reset",
    "timeout",
    "cut_short",
    "dropped",
    "bad_status",
    "bad_response",
    "other",
)


@dataclasses.dataclass
class HTTPStats(Counters):
    """
    One kind of HTTP client's counters; C{lost} counts requests sent that got no
    complete response, C{responseLatency} the time from a request's first byte
    out to its response's last byte in.
    """

    kinds: ClassVar[tuple[str, ...]] = HTTP_ERROR_KINDS
    unit: ClassVar[str] = "requests"
    doneLabel: ClassVar[str] = "requests ok"

    responseLatency: Latencies = dataclasses.field(
        default_factory=Latencies, repr=False, compare=False
    )

    def record(self, outcome: Outcome) -> None:
        """Count one request's outcome."""
        if outcome.kind:
            self.error(outcome.kind, outcome.detail, lost=outcome.lost)
            return
        with self._lock:
            self.exchanges += 1
            self.responseLatency.add(outcome.seconds)


class HTTPClients(Clients[HTTPStats]):
    """
    Threads sending requests to C{target}, each response judged by C{accept}.
    C{keepAlive} clients reuse a connection until the server ends it cleanly
    (C{Connection: close}, or a close between responses); the others make one
    request per connection.  With C{body}, requests are POSTs sent in C{pieces}.
    """

    def __init__(
        self,
        target: Target,
        nThreads: int,
        *,
        accept: Callable[[int], bool],
        keepAlive: bool,
        interval: float = 0.005,
        timeout: float = 5.0,
        body: bytes | None = None,
        pieces: int = 4,
    ) -> None:
        super().__init__(target.host, target.port, nThreads, timeout, HTTPStats())
        self.target = target
        self.accept = accept
        self.keepAlive = keepAlive
        self.interval = interval
        self.body = body
        self.pieces = pieces

    def _request(self, exchange: Exchange) -> Outcome:
        outcome = exchange.request(
            self.timeout, self.accept, self.body, self.pieces, self.interval
        )
        self._stats.record(outcome)
        return outcome

    def _run(self, idx: int) -> None:
        exchange: Exchange | None = None
        try:
            while not self._stop.is_set():
                if exchange is not None and not self._stillOpen(exchange.sock):
                    exchange.sock.close()
                    exchange = None
                if exchange is None:
                    sock = self._connect()
                    if sock is None:
                        self._stop.wait(0.001)
                        continue
                    exchange = Exchange(sock, self.target)
                outcome = self._request(exchange)
                if not (self.keepAlive and outcome.reusable):
                    if self.keepAlive and not outcome.kind:
                        self._stats.add("closedByServer")
                    exchange.sock.close()
                    exchange = None
                self._stop.wait(self.interval if self.keepAlive else 0.001)
        finally:
            if exchange is not None:
                exchange.sock.close()

    def _stillOpen(self, sock: socket.socket) -> bool:
        """
        Whether an idle keep-alive connection may carry the next request: a close
        by the server between responses is normal (counted, not an error).
        """
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return True
            data = sock.recv(1)
        except Exception as e:  # noqa: BLE001 - every failure must be counted
            self._stats.error(classify(e), f"idle connection: {e!r}")
            return False
        if data:
            self._stats.error("bad_response", f"unsolicited data {data!r}")
        else:
            self._stats.add("closedByServer")
        return False


class HTTPLoad:
    """
    The kinds of HTTP clients together, by name: C{short}, C{keepalive} and,
    with a body size, C{upload}.
    """

    def __init__(
        self,
        target: Target,
        *,
        accept: Callable[[int], bool],
        short: int,
        keepAlive: int,
        uploads: int = 0,
        postBytes: int = 0,
        interval: float = 0.005,
        timeout: float = 5.0,
    ) -> None:
        make = functools.partial(
            HTTPClients, target, accept=accept, interval=interval, timeout=timeout
        )
        self.clients: dict[str, HTTPClients] = {
            "short": make(short, keepAlive=False),
            "keepalive": make(keepAlive, keepAlive=True),
        }
        if uploads:
            body = bytes(range(256)) * (postBytes // 256) + b"x" * (postBytes % 256)
            self.clients["upload"] = make(uploads, keepAlive=True, body=body)

    @property
    def groups(self) -> dict[str, Counters]:
        """Each kind's counters, by name."""
        return {name: clients.stats for name, clients in self.clients.items()}

    @property
    def stats(self) -> Counters:
        """All counters together."""
        groups = list(self.groups.values())
        total = groups[0]
        for more in groups[1:]:
            total = total + more
        return total

    def start(self) -> None:
        """Start every client thread."""
        for clients in self.clients.values():
            clients.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop and join every thread; False if some did not finish."""
        for clients in self.clients.values():
            clients.stop()
        return all([clients.join(timeout) for clients in self.clients.values()])
