"""
The admin endpoint (C{--admin DESCRIPTION}): HTTP for orchestrators and scrapers.

  - C{GET /metrics}: L{txflip.control._metrics}, as OpenMetrics or Prometheus text
    (whichever the scraper's C{Accept} prefers);
  - C{GET /livez}: 200 whenever the process answers at all (its reactor runs: it can
    act, even while it drains);
  - C{GET /readyz}: 200 while the service accepts new work, 503 from the moment a
    final stop begins (or, under C{txflip run}, once C{SIGUSR2} asked it to fail
    readiness ahead of a stop: Kubernetes' C{preStop}).  An upgrade is I{not} a
    stop: the listening sockets never stop accepting, so it answers 200 throughout.

Under an L{txflip.service.UpgradeService} the admin socket is one more listener,
inherited by each next generation like any other; its connections are drained like
twisted.web's (L{txflip.protocols._web}), so that a scraper's keep-alive connection
moves to the new generation at its next request.  Under C{txflip run} the
supervisor serves it: it outlives every worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

import txflip.protocols._web  # noqa: F401 - makes twisted.web's channels drainable
from txflip.control._metrics import Counts, Exposition, Source

if TYPE_CHECKING:
    from txflip.generation._machine import Upgrader

_TEXT = b"text/plain; charset=utf-8"


class AdminResource(Resource):
    """
    C{/metrics}, C{/livez} and C{/readyz}.
    """

    isLeaf = True

    def __init__(self, source: Source, ready: Callable[[], bool]) -> None:
        super().__init__()
        self._exposition = Exposition(source)
        self._ready = ready

    def render_GET(self, request: Request) -> bytes:
        path = request.path
        if path == b"/metrics":
            accept = request.getHeader(b"accept") or b""
            body, contentType = self._exposition.render(accept.decode("latin-1"))
            request.setHeader(b"content-type", contentType.encode())
            return body
        request.setHeader(b"content-type", _TEXT)
        if path == b"/livez":
            return b"ok\n"
        if path == b"/readyz":
            if self._ready():
                return b"ready\n"
            request.setResponseCode(503)
            return b"not ready: stopping\n"
        request.setResponseCode(404)
        return b"not found: try /metrics, /livez or /readyz\n"


class _QuietSite(Site):
    """
    No access log: probes every few seconds would drown the service's own lines.
    """

    displayTracebacks = False
    noisy = False

    def log(self, request: Any) -> None:
        pass


def adminSite(source: Source, ready: Callable[[], bool]) -> Site:
    return _QuietSite(AdminResource(source, ready))


class ServiceAdmin:
    """
    The admin endpoint of one generation of an L{txflip.service.UpgradeService},
    and its metrics.
    """

    def __init__(
        self,
        upgrader: Upgrader,
        connections: Callable[[], int],
        finalStop: Callable[[], bool],
    ) -> None:
        """
        @param connections: how many of the application's connections are open.
        @param finalStop: whether a final stop has begun.
        """
        from txflip.control._carry import GenerationMetrics

        self.metrics = GenerationMetrics(upgrader, connections)
        self.site = adminSite(self.metrics, lambda: not finalStop())

    def ready(self) -> None:
        self.metrics.ready()

    def finished(self, drain: Counts) -> None:
        self.metrics.finished(drain)
