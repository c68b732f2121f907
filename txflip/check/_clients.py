"""
Load clients for C{txflip check}: the thread management every kind shares (line
echo in L{txflip.check._echoload}, HTTP in L{txflip.check._httpload}), and a probe connection
that says why it failed.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Generic

from txflip._errors import CheckError
from txflip.check._stats import CountersT, classify

if TYPE_CHECKING:
    from typing_extensions import Self


class Running:
    """
    Client threads that run for the length of a C{with} block: a stuck thread
    fails the block (unless it already failed).
    """

    def start(self) -> None:
        raise NotImplementedError

    def finish(self) -> bool:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        excType: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.finish() and excType is None:
            raise AssertionError(f"{type(self).__name__} threads did not stop")


class Clients(Running, Generic[CountersT]):
    """
    Common thread management: C{n_threads} loops until L{stop}, counting into
    C{stats}.  A subclass implements C{_run(idx)}.
    """

    def __init__(
        self, host: str, port: int, nThreads: int, timeout: float, stats: CountersT
    ) -> None:
        self.host = host
        self.port = port
        self.nThreads = nThreads
        self.timeout = timeout
        self._stats = stats
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def stats(self) -> CountersT:
        """A point-in-time copy of the counters."""
        return self._stats.snapshot()

    def start(self) -> None:
        """Start the client threads."""
        for i in range(self.nThreads):
            t = threading.Thread(
                target=self._guardedRun,
                args=(i,),
                name=f"{type(self).__name__}-{i}",
                daemon=True,
            )
            self._threads.append(t)
            t.start()

    def stop(self) -> None:
        """Ask the threads to finish; in-flight exchanges still complete."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the threads; return False if some are still running."""
        if timeout is None:
            timeout = 2 * self.timeout + 2.0
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0.0))
        return not any(t.is_alive() for t in self._threads)

    def _connect(self) -> socket.socket | None:
        """Connect, counting the connection or the error; None on error."""
        started = time.monotonic()
        try:
            sock = socket.create_connection((self.host, self.port), self.timeout)
        except OSError as e:
            self._stats.error(classify(e), f"connect: {e!r}")
            return None
        self._stats.connected(time.monotonic() - started)
        return sock

    def _guardedRun(self, idx: int) -> None:
        try:
            self._run(idx)
        except Exception as e:  # noqa: BLE001 - surface as a counted error
            self._stats.error("other", f"client thread {idx} crashed: {e!r}")

    def _run(self, idx: int) -> None:
        raise NotImplementedError

    def finish(self) -> bool:
        """Stop and join the threads; False if some did not finish."""
        self.stop()
        return self.join()


def connectOrFail(host: str, port: int, timeout: float) -> socket.socket:
    """
    A connection for a probe.

    @raise CheckError: why there is none.
    """
    where = f"{host}:{port}"
    try:
        return socket.create_connection((host, port), timeout)
    except ConnectionRefusedError:
        raise CheckError(f"cannot connect to {where}: connection refused") from None
    except TimeoutError:
        raise CheckError(f"cannot connect to {where}: timed out") from None
    except OSError as e:
        raise CheckError(f"cannot connect to {where}: {e.strerror or e}") from None
