"""
What C{txflip check} counts: errors by kind, lost exchanges, connections, and
latency distributions in bounded memory, for any kind of load client (line echo,
HTTP).  Thread-safe: the clients are threads.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Self

#: Error kinds counted by L{Stats}; C{other} catches the unexpected so that a client
#: thread never dies silently.
ERROR_KINDS = ("refused", "reset", "timeout", "short_read", "wrong_echo", "other")

_MAX_SAMPLES = 20  # error descriptions kept per Stats, for diagnostics


def classify(exc: BaseException) -> str:
    """The error kind of a socket exception."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "other"


class Latencies:
    """
    A latency distribution in bounded memory: log-spaced buckets 1% wide (from
    1 microsecond up), plus the exact count and maximum.  Quantiles are accurate to
    1%, however long the run.
    """

    _BASE = 1e-6
    _LOG_GROWTH = math.log(1.01)

    def __init__(self) -> None:
        self.count = 0
        self.max = 0.0
        self._buckets: dict[int, int] = {}

    def add(self, seconds: float) -> None:
        """Record one latency."""
        index = 0
        if seconds > self._BASE:
            index = int(math.log(seconds / self._BASE) / self._LOG_GROWTH) + 1
        self._buckets[index] = self._buckets.get(index, 0) + 1
        self.count += 1
        self.max = max(self.max, seconds)

    def merge(self, other: Latencies) -> Latencies:
        """A new distribution holding both."""
        merged = self.copy()
        for index, n in other._buckets.items():
            merged._buckets[index] = merged._buckets.get(index, 0) + n
        merged.count += other.count
        merged.max = max(merged.max, other.max)
        return merged

    def copy(self) -> Latencies:
        copied = Latencies()
        copied.count, copied.max = self.count, self.max
        copied._buckets = dict(self._buckets)
        return copied

    def quantile(self, q: float) -> float | None:
        """The C{q} quantile (0 < q <= 1), or None without samples."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                upper = self._BASE * math.exp(index * self._LOG_GROWTH)
                return min(upper, self.max)
        return self.max  # pragma: no cover - rank <= count


@dataclasses.dataclass
class Counters:
    """
    Thread-safe counters for a group of load clients; a subclass names its error
    kinds (C{kinds}, in the order the report shows them; counted in C{errors}) and
    its unit of work.

    Every C{lost} exchange is also counted under the error kind that lost it, so
    L{errorsTotal} does not add C{lost} in again.  C{closedByServer} counts clean
    closes between exchanges (not errors).  C{exchanges} is the number of exchanges
    that went right.  Each L{Latencies} field is a distribution the report shows.
    """

    #: The error kinds: names of C{int} fields.
    kinds: ClassVar[tuple[str, ...]] = ()
    #: What one exchange is, in the report: "lines", "requests".
    unit: ClassVar[str] = "exchanges"
    #: The report's label for C{exchanges}.
    doneLabel: ClassVar[str] = "exchanges"

    connections: int = 0
    exchanges: int = 0
    lost: int = 0
    closedByServer: int = 0
    #: Errors by kind (one of L{kinds}).
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    samples: list[str] = dataclasses.field(default_factory=list)
    connectLatency: Latencies = dataclasses.field(
        default_factory=Latencies, repr=False, compare=False
    )
    _lock: threading.Lock = dataclasses.field(
        default_factory=threading.Lock, repr=False, compare=False
    )

    def add(self, name: str, n: int = 1) -> None:
        """Increment counter C{name} by C{n} atomically."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def connected(self, seconds: float) -> None:
        """Count one connection that took C{seconds} to establish."""
        with self._lock:
            self.connections += 1
            self.connectLatency.add(seconds)

    def error(self, kind: str, detail: str, *, lost: bool = False) -> None:
        """Count one error of C{kind} (and a lost exchange if C{lost})."""
        assert kind in self.kinds, kind
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            if lost:
                self.lost += 1
            if len(self.samples) < _MAX_SAMPLES:
                self.samples.append(f"{kind}: {detail}")

    def errorsTotal(self) -> int:
        """Number of errors of all kinds."""
        with self._lock:
            return sum(self.errors.values())

    def count(self, kind: str) -> int:
        """How many errors of C{kind}."""
        return self.errors.get(kind, 0)

    def latencies(self) -> dict[str, Latencies]:
        """Each distribution by name (C{connectLatency} is C{"connect"})."""
        return {
            f.name.removesuffix("Latency"): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name.endswith("Latency")
        }

    def snapshot(self) -> Self:
        """A consistent copy that no longer changes."""
        with self._lock:
            copies: dict[str, Any] = {
                f"{name}Latency": latency.copy()
                for name, latency in self.latencies().items()
            }
            return dataclasses.replace(
                self,
                errors=dict(self.errors),
                samples=list(self.samples),
                _lock=threading.Lock(),
                **copies,
            )

    def __add__(self, other: Self) -> Self:
        a, b = self.snapshot(), other.snapshot()
        merged: dict[str, Any] = {}
        for f in dataclasses.fields(a):
            mine, theirs = getattr(a, f.name), getattr(b, f.name)
            if f.name == "_lock":
                continue
            if isinstance(mine, Latencies):
                merged[f.name] = mine.merge(theirs)
            elif isinstance(mine, list):
                merged[f.name] = (mine + theirs)[:_MAX_SAMPLES]
            elif isinstance(mine, dict):
                merged[f.name] = {
                    kind: mine.get(kind, 0) + theirs.get(kind, 0)
                    for kind in {**mine, **theirs}
                }
            else:
                merged[f.name] = mine + theirs
        return type(a)(**merged)

    def __str__(self) -> str:
        s = self.snapshot()
        kinds = " ".join(f"{k}={s.count(k)}" for k in s.kinds)
        text = (
            f"connections={s.connections} exchanges={s.exchanges} "
            f"errors={s.errorsTotal()} ({kinds}) lost={s.lost} "
            f"closed_by_server={s.closedByServer}"
        )
        if s.samples:
            text += "\n  " + "\n  ".join(s.samples)
        return text


@dataclasses.dataclass
class Stats(Counters):
    """
    The line-echo clients' counters; C{lost} counts lines sent but never echoed.
    """

    kinds: ClassVar[tuple[str, ...]] = ERROR_KINDS
    unit: ClassVar[str] = "lines"
    doneLabel: ClassVar[str] = "lines echoed"


CountersT = TypeVar("CountersT", bound=Counters)
