"""
The counts behind C{/metrics}: their wire form (passed between generations and from
workers to their supervisor) and the histogram's buckets.
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from txflip.control._metrics import BUCKETS, Counts, Exposition, drained


def test_wireRoundTrip() -> None:
    counts = Counts()
    counts.upgraded("succeeded", 0.3)
    counts.upgraded("failed")
    counts.upgraded("rolled_back")
    counts.finished(2, 3, 1)
    counts.restarts = 4
    assert Counts.fromWire(counts.toWire()) == counts


@pytest.mark.parametrize(
    "broken",
    [
        None,
        {},
        {"upgrades": {}, "durations": [0], "durationSum": 0},
        {"upgrades": {"failed": -1}, "durations": [0] * (len(BUCKETS) + 1),
         "durationSum": 0},
        {"upgrades": {}, "durations": [0] * (len(BUCKETS) + 1), "durationSum": "1"},
        {"upgrades": {}, "durations": [0] * (len(BUCKETS) + 1), "durationSum": 0,
         "moved": True},
    ],
)  # fmt: skip
def test_badWireIsRefused(broken: object) -> None:
    with pytest.raises(ValueError):
        Counts.fromWire(broken)


def test_drainedIsWhatWasNeitherMovedNorCut() -> None:
    assert drained(10, 4, 1) == Counts(moved=4, drained=5, aborted=1)
    assert drained(0, 0, 2).drained == 0


class Source:
    generation = 3
    connections = 7

    def __init__(self, counts: Counts, workers: dict[str, int] | None) -> None:
        self._counts = counts
        self._workers = workers

    def counts(self) -> Counts:
        return self._counts

    def workers(self) -> dict[str, int] | None:
        return self._workers


def parsed(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_histogramIsCumulative() -> None:
    """
    Upgrades of 0.07 s, 0.3 s and 500 s: the buckets count cumulatively, +Inf
    counts all three.
    """
    counts = Counts()
    for took in (0.07, 0.3, 500.0):
        counts.upgraded("succeeded", took)
    body, contentType = Exposition(Source(counts, None)).render("text/plain")
    assert contentType.startswith("text/plain")
    samples = parsed(body)
    bucket = "txflip_upgrade_duration_seconds_bucket"
    assert samples[(bucket, (("le", "0.05"),))] == 0
    assert samples[(bucket, (("le", "0.1"),))] == 1
    assert samples[(bucket, (("le", "0.5"),))] == 2
    assert samples[(bucket, (("le", "120.0"),))] == 2
    assert samples[(bucket, (("le", "+Inf"),))] == 3
    assert samples[("txflip_upgrade_duration_seconds_count", ())] == 3
    assert samples[("txflip_generation", ())] == 3
    assert samples[("txflip_connections_open", ())] == 7
    assert ("txflip_workers", (("state", "ready"),)) not in samples


def test_openMetricsAndWorkers() -> None:
    source = Source(Counts(restarts=2), {"ready": 2, "starting": 0})
    body, contentType = Exposition(source).render(
        "application/openmetrics-text; version=1.0.0"
    )
    assert contentType.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert b'txflip_workers{state="ready"} 2.0' in body
    assert b"txflip_worker_restarts_total 2.0" in body
