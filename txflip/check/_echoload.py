"""
The line-echo load of C{txflip check} (and of the test suite and the benchmarks):
short-lived clients (connect, one line, its echo, close) and long-lived ones (one
connection each, a line every few milliseconds, reconnecting when the server closes
it).

The clients are plain threads with blocking sockets, not Twisted: a verifier
observes the server from the outside, like real clients, so that a bug in the
reactor or in txflip cannot also hide itself from the measurement.
"""

from __future__ import annotations

import select
import socket
import time
from typing import TYPE_CHECKING

from txflip._errors import CheckError
from txflip.check._clients import Clients, Running, connectOrFail
from txflip.check._stats import Stats, classify

if TYPE_CHECKING:
    pass

_PROBE = b"txflip-check-probe\n"


def _exchange(sock: socket.socket, line: bytes, timeout: float) -> tuple[str, str]:
    """
    Send C{line} and read its echo, within C{timeout} seconds in all.

    @return: C{("", "")} on success, else C{(kind, detail)}.
    """
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        sock.settimeout(timeout)
        sock.sendall(line)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout", f"no full echo of {line!r} (got {buf!r})"
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
            if not chunk:
                return "short_read", f"EOF after {buf!r} for {line!r}"
            buf += chunk
    except Exception as e:  # noqa: BLE001 - every failure must be counted
        return classify(e), f"{e!r} after {buf!r} for {line!r}"
    if buf != line:
        return "wrong_echo", f"sent {line!r} got {buf!r}"
    return "", ""


class ShortClients(Clients[Stats]):
    """
    Threads doing connect / one echo / close in a tight loop.

    They exercise the listening socket: any moment without an accepting listener
    shows up as C{refused} (or C{reset} for a dropped backlog).
    """

    def __init__(
        self, host: str, port: int, nThreads: int, *, timeout: float = 5.0
    ) -> None:
        super().__init__(host, port, nThreads, timeout, Stats())

    def _run(self, idx: int) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            line = f"s{idx}-{seq}\n".encode()
            sock = self._connect()
            if sock is not None:
                with sock:
                    kind, detail = _exchange(sock, line, self.timeout)
                if not kind:
                    self._stats.add("exchanges")
                else:
                    self._stats.error(kind, detail, lost=kind != "wrong_echo")
            self._stop.wait(0.001)


class LongClients(Clients[Stats]):
    """
    Threads each holding one connection, doing lock-step echoes every C{interval}
    seconds.

    They exercise established connections across an upgrade.  A clean close by the
    server between exchanges is normal (reconnect, no error); a line that was sent
    but not echoed counts as C{lost}.  The EOF check before each send narrows, but
    cannot close, the window where the server closes just as a new line is on its
    way: a server must close I{with} a reply, as txflip's draining does.
    """

    def __init__(
        self,
        host: str,
        port: int,
        nThreads: int,
        interval: float = 0.005,
        *,
        timeout: float = 5.0,
    ) -> None:
        super().__init__(host, port, nThreads, timeout, Stats())
        self.interval = interval

    def _idleCheck(self, sock: socket.socket) -> str:
        """ "" if C{sock} is still open and quiet, "eof", or an error kind."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return ""
            sock.settimeout(self.timeout)
            data = sock.recv(4096)
        except Exception as e:  # noqa: BLE001 - every failure must be counted
            kind = classify(e)
            self._stats.error(kind, f"idle connection: {e!r}")
            return kind
        if not data:
            return "eof"
        self._stats.error("wrong_echo", f"unsolicited data {data!r}")
        return "wrong_echo"

    def _run(self, idx: int) -> None:
        sock: socket.socket | None = None
        seq = 0
        try:
            while not self._stop.is_set():
                if sock is None:
                    sock = self._connect()
                    if sock is None:
                        self._stop.wait(0.001)
                        continue
                else:
                    state = self._idleCheck(sock)
                    if state:
                        if state == "eof":
                            self._stats.add("closedByServer")
                        sock.close()
                        sock = None
                        continue
                seq += 1
                line = f"l{idx}-{seq}\n".encode()
                kind, detail = _exchange(sock, line, self.timeout)
                if not kind:
                    self._stats.add("exchanges")
                    self._stop.wait(self.interval)
                else:
                    self._stats.error(kind, detail, lost=kind != "wrong_echo")
                    sock.close()
                    sock = None
                    self._stop.wait(0.001)
        finally:
            if sock is not None:
                sock.close()


class Load(Running):
    """
    Short and long clients together, stopped and joined on exit.

    C{with Load(host, port, short=4, long=4) as load: ...}, then look at
    C{load.stats} (combined) or C{load.shortStats} / C{load.longStats}.
    """

    def __init__(
        self,
        host: str,
        port: int,
        short: int = 4,
        long: int = 4,
        *,
        interval: float = 0.005,
        timeout: float = 5.0,
    ) -> None:
        self.short = ShortClients(host, port, short, timeout=timeout)
        self.long = LongClients(host, port, long, interval, timeout=timeout)

    @property
    def shortStats(self) -> Stats:
        """Copy of the short clients' counters."""
        return self.short.stats

    @property
    def longStats(self) -> Stats:
        """Copy of the long clients' counters."""
        return self.long.stats

    @property
    def stats(self) -> Stats:
        """Combined copy of all counters."""
        return self.shortStats + self.longStats

    def start(self) -> None:
        """Start all client threads."""
        self.short.start()
        self.long.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop and join all threads; return False if some did not finish."""
        self.short.stop()
        self.long.stop()
        shortDone = self.short.join(timeout)
        longDone = self.long.join(timeout)
        return shortDone and longDone

    def finish(self) -> bool:
        return self.stop()


def probeEcho(host: str, port: int, timeout: float) -> None:
    """
    One echo, before any load: is something there, and does it echo lines?

    @raise CheckError: with the reason.
    """
    with connectOrFail(host, port, timeout) as sock:
        kind, detail = _exchange(sock, _PROBE, timeout)
    if kind:
        raise CheckError(f"{host}:{port} does not echo lines ({kind}: {detail})")
