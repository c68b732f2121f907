"""
What C{GET /metrics} of the admin endpoint reports (L{txflip.control._admin}).

The counts themselves are plain integers in a L{Counts}, kept by whoever owns them
(a generation, or C{txflip run}'s supervisor): counting costs the serving path
nothing, a L{Counts} travels as a small JSON object (to the next generation,
L{txflip.control._carry}; from a worker to its supervisor), and
C{prometheus_client} is imported only when something is scraped, so that neither
C{import txflip} nor a service without C{--admin} pays for it.

Counters, not a last-result gauge: a scrape that misses a failed upgrade still
sees the counter move (cf. ingress-nginx#13818).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

#: The upgrade outcomes C{txflip_upgrades_total} counts, by C{result} label.
RESULTS = ("succeeded", "failed", "rolled_back")
#: Upper bounds (seconds) of C{txflip_upgrade_duration_seconds}'s buckets.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_CONNECTIONS = ("moved", "drained", "aborted")


@dataclass
class Counts:
    """
    Every counter of a service, continued from generation to generation.

    @ivar durations: how many upgrades took at most each of L{BUCKETS}, per bucket
        (not cumulative); the last entry counts those that took longer.
    """

    upgrades: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))
    durations: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    durationSum: float = 0.0
    moved: int = 0
    drained: int = 0
    aborted: int = 0
    restarts: int = 0

    def upgraded(self, result: str, took: float | None = None) -> None:
        """
        One upgrade ended with C{result} (one of L{RESULTS}); C{took} seconds from
        its signal to its new generation's ready, if it got that far.
        """
        self.upgrades[result] += 1
        if took is not None:
            took = max(0.0, took)
            self.durations[bisect.bisect_left(BUCKETS, took)] += 1
            self.durationSum += took

    def finished(self, moved: int, drained: int, aborted: int) -> None:
        """
        A drain is over: what became of the connections it began with.
        """
        self.moved += moved
        self.drained += drained
        self.aborted += aborted

    def plus(self, other: Counts) -> Counts:
        """
        The sum of two sets of counts (a predecessor's and ours).
        """
        return Counts(
            {r: self.upgrades[r] + other.upgrades[r] for r in RESULTS},
            [a + b for a, b in zip(self.durations, other.durations, strict=True)],
            self.durationSum + other.durationSum,
            self.moved + other.moved,
            self.drained + other.drained,
            self.aborted + other.aborted,
            self.restarts + other.restarts,
        )

    def toWire(self) -> dict[str, Any]:
        return {
            "upgrades": dict(self.upgrades),
            "durations": list(self.durations),
            "durationSum": self.durationSum,
            **{name: getattr(self, name) for name in (*_CONNECTIONS, "restarts")},
        }

    @classmethod
    def fromWire(cls, wire: object) -> Counts:
        """
        @raise ValueError: C{wire} is not what L{toWire} makes.
        """

        def count(value: object) -> int:
            if type(value) is not int or value < 0:
                raise ValueError(f"bad count {value!r}")
            return value

        if not isinstance(wire, dict) or not isinstance(wire.get("upgrades"), dict):
            raise ValueError("bad counts")
        durations = wire.get("durations")
        if not isinstance(durations, list) or len(durations) != len(BUCKETS) + 1:
            raise ValueError("bad durations")
        total = wire.get("durationSum")
        if not isinstance(total, (int, float)) or isinstance(total, bool):
            raise ValueError("bad durationSum")
        return cls(
            {r: count(wire["upgrades"].get(r, 0)) for r in RESULTS},
            [count(n) for n in durations],
            float(total),
            *(count(wire.get(name, 0)) for name in (*_CONNECTIONS, "restarts")),
        )


def drained(opened: int, moved: int, aborted: int) -> Counts:
    """
    What became of the C{opened} connections a drain began with.
    """
    counts = Counts()
    counts.finished(moved, max(0, opened - moved - aborted), aborted)
    return counts


class Source(Protocol):
    """
    What the admin endpoint reads at each scrape.
    """

    def counts(self) -> Counts:
        "Every counter, continued across generations."

    @property
    def generation(self) -> int:
        "The generation now serving."

    @property
    def connections(self) -> int:
        "How many connections are open now."

    def workers(self) -> Mapping[str, int] | None:
        "Under txflip run: how many workers are in each state; otherwise None."


def _families(source: Source) -> Iterator[Any]:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    counts = source.counts()
    yield GaugeMetricFamily(
        "txflip_generation", "The generation now serving.", value=source.generation
    )
    upgrades = CounterMetricFamily(
        "txflip_upgrades", "Upgrades, by how they ended.", labels=["result"]
    )
    for result in RESULTS:
        upgrades.add_metric([result], counts.upgrades[result])
    yield upgrades
    cumulative, buckets = 0, []
    for bound, n in zip((*map(str, BUCKETS), "+Inf"), counts.durations, strict=True):
        cumulative += n
        buckets.append((bound, cumulative))
    yield HistogramMetricFamily(
        "txflip_upgrade_duration_seconds",
        "Seconds from an upgrade's signal to its new generation's ready.",
        buckets=buckets,
        sum_value=counts.durationSum,
    )
    for name, what in (
        ("moved", "Connections moved to a newer generation."),
        ("drained", "Connections that finished while their generation drained."),
        ("aborted", "Connections cut at the drain timeout."),
    ):
        yield CounterMetricFamily(
            f"txflip_connections_{name}", what, value=getattr(counts, name)
        )
    yield GaugeMetricFamily(
        "txflip_connections_open", "Connections open now.", value=source.connections
    )
    workers = source.workers()
    if workers is not None:
        family = GaugeMetricFamily(
            "txflip_workers", "txflip run's workers, by state.", labels=["state"]
        )
        for state, n in sorted(workers.items()):
            family.add_metric([state], n)
        yield family
        yield CounterMetricFamily(
            "txflip_worker_restarts",
            "Workers that died while serving and were replaced.",
            value=counts.restarts,
        )


class Exposition:
    """
    Renders a L{Source} with C{prometheus_client}, imported on first use.
    """

    def __init__(self, source: Source) -> None:
        self._source = source
        self._registry: Any = None

    def render(self, accept: str) -> tuple[bytes, str]:
        """
        The metrics in the format C{accept} (an HTTP C{Accept} header) prefers
        (OpenMetrics or Prometheus text), and its content type.
        """
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_Collector(lambda: _families(self._source)))
        encode, contentType = choose_encoder(accept)
        return encode(self._registry), contentType


class _Collector:
    def __init__(self, collect: Callable[[], Iterator[Any]]) -> None:
        self.collect = collect
