"""
C{txflip run --admin DESCRIPTION}: the supervisor serves the admin endpoint
(L{txflip.control._admin}) for the whole service.

The supervisor owns the counters (L{txflip.run._supervisor}: upgrades, their
durations, worker restarts; what became of the workers' connections, which each
worker reports as it finishes); the gauges are read at each scrape from its status.
It is never replaced, so nothing needs carrying.  C{SIGUSR2} fails readiness for
good, ahead of a stop (Kubernetes' C{preStop}: the endpoint is removed while the
workers still accept; the C{SIGTERM} that follows drains them).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from txflip.control._metrics import Counts
from txflip.listen._addresses import ListenSpec, parseListen
from txflip.listen._fds import Listener, bindSocket

if TYPE_CHECKING:
    from txflip.run._supervisor import Supervisor

#: Supervisor states in which the service accepts new work.
SERVING = ("serving", "upgrading", "probation")
WORKER_STATES = ("starting", "ready", "stopping")
_log = Logger()


class RunAdmin:
    """
    The admin endpoint's view of a supervisor (a L{txflip.control._metrics.Source}).
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._status: dict[str, Any] = {}
        #: Readiness was given up (C{SIGUSR2}).
        self.quiesced = False

    def quiesce(self) -> None:
        if not self.quiesced:
            self.quiesced = True
            _log.info("txflip run: SIGUSR2: /readyz fails from now on")

    def isReady(self) -> bool:
        return not self.quiesced and self._supervisor.status()["state"] in SERVING

    def counts(self) -> Counts:
        # First in each scrape: one status (it reads /proc) serves the gauges too.
        self._status = self._supervisor.status()
        return self._supervisor.counts()

    @property
    def generation(self) -> int:
        return int(self._status.get("generation", 0))

    @property
    def connections(self) -> int:
        return int(self._status.get("connections", 0))

    def workers(self) -> Mapping[str, int]:
        states = dict.fromkeys(WORKER_STATES, 0)
        for worker in self._status.get("workers", []):
            states[worker["state"]] = states.get(worker["state"], 0) + 1
        return states


def bindAdmin(description: str) -> tuple[ListenSpec, socket.socket]:
    """
    Bind the admin endpoint's socket, before anything starts.

    @raise ListenError: a one-line reason.
    """
    spec = parseListen(description)
    sock = bindSocket(spec)
    return spec, sock


def serveAdmin(
    reactor: Any, bound: tuple[ListenSpec, socket.socket], admin: RunAdmin
) -> tuple[Listener, Any]:
    """
    Serve C{admin} on the socket L{bindAdmin} made: (the listener, its tracker).
    """
    from txflip.control._admin import adminSite
    from txflip.drain._tracker import ConnectionTracker

    spec, sock = bound
    tracker = ConnectionTracker(adminSite(admin, admin.isReady), reactor)
    listener = Listener(spec, spec, sock, inherited=False)
    listener.adoptStream(reactor, tracker)
    _log.info("txflip run: admin endpoint on {spec}", spec=spec)
    return listener, tracker
