"""
One HTTP/1.1 request and its response, over a blocking socket we own, judged as a
user would judge it.

h11 (a sans-IO HTTP/1.1 parser) does the protocol: framing by C{Content-Length}
or chunks, keep-alive and C{Connection: close}, a body cut short.  The socket stays
ours, so every connect, send, pause and read happens when we say, with our
deadline, and a reset or a close is seen exactly where it happened, never hidden
by a pool or a retry (which is what C{http.client}, urllib3 and httpx add).
"""

from __future__ import annotations

import dataclasses
import socket
import time
import urllib.parse
from collections.abc import Callable

import h11

from txflip._errors import CheckError
from txflip.check._stats import classify

_READ = 65536


@dataclasses.dataclass(frozen=True)
class Target:
    """
    Where to send requests: from a C{http://host:port/path?query} URL.
    """

    host: str
    port: int
    path: str
    authority: str

    @classmethod
    def fromURL(cls, url: str) -> Target:
        """
        @raise CheckError: for anything but an absolute C{http:} URL.
        """
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise CheckError(f"bad URL {url!r}: {e}") from None
        if parts.scheme != "http":
            raise CheckError(f"bad URL {url!r}: only http:// URLs are supported")
        if not parts.hostname:
            raise CheckError(f"bad URL {url!r}: no host")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.hostname, port or 80, path, parts.netloc.rpartition("@")[2])

    def __str__(self) -> str:
        return f"http://{self.authority}{self.path}"


def expectStatus(spec: str) -> Callable[[int], bool]:
    """
    An argparse type: C{"2xx,3xx"}, C{"200,204"} or a mix, as a predicate.
    """
    accepted: list[tuple[int, int]] = []
    for item in spec.split(","):
        item = item.strip().lower()
        if len(item) == 3 and item.endswith("xx") and item[0] in "12345":
            low = int(item[0]) * 100
            accepted.append((low, low + 99))
        elif item.isdigit() and 100 <= int(item) <= 599:
            accepted.append((int(item), int(item)))
        else:
            raise ValueError(f"expected statuses like 200 or 2xx, not {spec!r}")
    return lambda status: any(low <= status <= high for low, high in accepted)


@dataclasses.dataclass
class Outcome:
    """
    How one request went.  C{kind} is empty on success, else an error kind;
    C{lost} when the request was sent but no complete response came.
    C{reusable} when the connection may carry the next request.
    """

    kind: str = ""
    detail: str = ""
    status: int | None = None
    lost: bool = False
    reusable: bool = False
    seconds: float = 0.0


class Exchange:
    """
    A client connection: L{request} sends one request and reads its response.
    """

    def __init__(self, sock: socket.socket, target: Target) -> None:
        self.sock = sock
        self.target = target
        self.requests = 0
        self._h11 = h11.Connection(h11.CLIENT)

    def request(
        self,
        timeout: float,
        accept: Callable[[int], bool],
        body: bytes | None = None,
        pieces: int = 1,
        pause: float = 0.0,
    ) -> Outcome:
        """
        Send a GET (or, with C{body}, a POST in C{pieces} writes C{pause} seconds
        apart) and read the whole response, within C{timeout} seconds in all.
        """
        started = time.monotonic()
        deadline = started + timeout
        reused = self.requests > 0
        self.requests += 1
        outcome = Outcome()
        try:
            self._send(body, pieces, pause)
            outcome.lost = True
            self._receive(outcome, deadline, accept)
        except h11.ProtocolError as e:
            outcome.kind = "cut_short" if outcome.status else "bad_response"
            outcome.detail = str(e)
        except TimeoutError:
            outcome.kind, outcome.detail = "timeout", f"no response in {timeout:g} s"
        except Exception as e:  # noqa: BLE001 - every failure must be counted
            outcome.kind, outcome.detail = classify(e), repr(e)
        outcome.seconds = time.monotonic() - started
        if outcome.kind == "dropped" and reused:
            outcome.detail += f" (request {self.requests} on this connection)"
        if outcome.kind:
            outcome.reusable = False
        return outcome

    def _send(self, body: bytes | None, pieces: int, pause: float) -> None:
        conn = self._h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        headers = [("Host", self.target.authority), ("User-Agent", "txflip-check")]
        if body is not None:
            headers.append(("Content-Length", str(len(body))))
        method = "GET" if body is None else "POST"
        self.sock.sendall(
            conn.send(
                h11.Request(method=method, target=self.target.path, headers=headers)
            )
        )
        if body:
            size = -(-len(body) // max(pieces, 1))
            for offset in range(0, len(body), size):
                if offset and pause:
                    time.sleep(pause)
                self.sock.sendall(
                    conn.send(h11.Data(data=body[offset : offset + size]))
                )
        self.sock.sendall(conn.send(h11.EndOfMessage()))

    def _receive(
        self, outcome: Outcome, deadline: float, accept: Callable[[int], bool]
    ) -> None:
        conn = self._h11
        received = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self.sock.settimeout(remaining)
                data = self.sock.recv(_READ)
                if not data and outcome.status is None:
                    outcome.kind = "dropped"
                    outcome.detail = "closed without a response"
                    return
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                outcome.status = event.status_code
            elif isinstance(event, h11.Data):
                received += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):  # pragma: no cover
                raise h11.RemoteProtocolError("closed mid-response")
        outcome.lost = False
        outcome.reusable = conn.their_state is h11.DONE
        if outcome.status is not None and not accept(outcome.status):
            outcome.kind = "bad_status"
            outcome.detail = f"status {outcome.status} ({received} bytes of body)"
