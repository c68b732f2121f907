"""
The twisted.application glue: a service that owns an L{Upgrader}, serves protocol
factories on its listeners, upgrades on SIGHUP, stops gracefully on SIGQUIT (and on
twistd's SIGTERM/SIGINT shutdown), and drains every connection before the process
exits.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txflip._errors import (
    ListenError,
    TxflipError,
    UpgradeError,
)
from txflip._jsonlog import context as logContext
from txflip._reactor import Reactor, asReactor
from txflip._settings import DEFAULT_DRAIN_TIMEOUT, DEFAULT_IDLE_GRACE, seconds
from txflip.control._metrics import drained
from txflip.control._reports import Reports
from txflip.control._server import REQUEST_TIMEOUT, ControlFactory
from txflip.drain._tracker import ConnectionTracker, drainAll
from txflip.generation._process import tellParentError
from txflip.generation._signals import releaseSignals
from txflip.generation._upgrader import Upgrader
from txflip.listen._addresses import ListenSpec
from txflip.listen._fds import Listener
from txflip.move._service import ServiceMoves, Stream
from txflip.run._balance import NAME as BALANCE
from txflip.run._balance import Balancer, balanceWorker
from txflip.systemd import Notifier

if TYPE_CHECKING:
    from txflip.control._admin import ServiceAdmin


class UpgradeService(Service):
    """
    Serve factories on txflip listeners, with graceful upgrades.

    Listeners are bound (or inherited) when you call L{listen}, so that a port in use
    is reported before the process daemonizes; they start accepting in
    L{privilegedStartService}, and the generation declares itself ready once the
    reactor runs.

    @ivar upgrader: the L{Upgrader} of this process.
    """

    _log = Logger()

    def __init__(
        self,
        upgrader: Upgrader,
        *,
        drainTimeout: float = DEFAULT_DRAIN_TIMEOUT,
        idleGrace: float = DEFAULT_IDLE_GRACE,
        reactor: object | None = None,
        installSignalHandlers: bool = True,
        notifier: Notifier | None = None,
        move: bool = True,
    ) -> None:
        """
        @param reactor: defaults to the upgrader's (the one reactor of the
            process).
        @param move: move connections whose protocol provides L{IMovable} to the
            next generation instead of draining them, and take those the previous
            generation moves (L{False}: they all drain, as before).
        """
        self.upgrader = upgrader
        reactor = upgrader.reactor if reactor is None else asReactor(reactor)
        self.drainTimeout = seconds("drainTimeout", drainTimeout)
        self.idleGrace = seconds("idleGrace", idleGrace)
        self.move = move
        self._reactor = reactor
        self._installSignals = installSignalHandlers
        self._streams: list[Stream] = []
        self._controls: list[Stream] = []
        self._moves = ServiceMoves(upgrader, reactor, self._streams, move)
        self._datagrams: list[tuple[Listener, DatagramProtocol]] = []
        self._adopted = False
        self._balancer: Balancer | None = None
        self._stopping: Deferred[None] | None = None
        self._failed = False
        self.notifier = notifier if notifier is not None else Notifier.fromEnvironment()
        #: What this generation says about itself: to systemd, to C{txflip status}.
        self.reports = Reports(upgrader, self.notifier)
        #: The admin endpoint (L{listenAdmin}), if any.
        self.admin: ServiceAdmin | None = None

    @property
    def isReady(self) -> bool:
        """
        Whether this generation serves (L{Upgrader.isReady}).
        """
        return self.upgrader.isReady

    @property
    def finalStop(self) -> bool:
        """
        Whether a final stop (not an upgrade's) has begun: C{/readyz} fails.
        """
        return self._stopping is not None and self.upgrader.successor is None

    @property
    def clock(self) -> Reactor:
        """
        The reactor, as the control socket's timeouts use it.
        """
        return self._reactor

    def status(self) -> dict[str, object]:
        """
        What C{txflip status} shows (L{Reports.status}).
        """
        return self.reports.status(self.connections)

    @property
    def connections(self) -> int:
        """
        How many connections are open now.
        """
        return sum(len(tracker) for _, tracker, _ in self._streams)

    def listen(
        self,
        description: str | ListenSpec | Listener,
        factory: IProtocolFactory,
        wrap: Callable[[IProtocolFactory], IProtocolFactory] | None = None,
    ) -> Listener:
        """
        Serve C{factory} on C{description}, tracking its connections for draining.

        @param wrap: wraps the tracking factory before it serves, e.g. in TLS, so
            that what is tracked and drained is the application's protocol.
        @raise ListenError: bad description or address not available.
        """
        listener = (
            description
            if isinstance(description, Listener)
            else self.upgrader.listen(description)
        )
        tracker = ConnectionTracker(factory, self._reactor)
        served = tracker if wrap is None else wrap(tracker)
        self._streams.append((listener, tracker, served))
        if self._adopted:
            listener.adoptStream(self._reactor, served)
            self._logListening(listener)
        return listener

    def listenControl(
        self, path: str, requestTimeout: float = REQUEST_TIMEOUT
    ) -> Listener:
        """
        Open the control socket at C{path} (mode 0600) for C{txflip upgrade} and
        C{txflip status}.
        """
        if (supervisor := self.upgrader.supervisor) is not None:
            raise supervisor.ownControl(path)
        spec = ListenSpec("unix", path=os.path.abspath(path), mode=0o600)
        return self._listenOwn(spec, ControlFactory(self, requestTimeout))

    def listenAdmin(self, description: str) -> Listener:
        """
        Serve the admin endpoint (L{txflip.control._admin}: C{/metrics},
        C{/livez}, C{/readyz}) on C{description}.
        """
        from txflip.control._admin import ServiceAdmin, refuseUnderSupervisor

        refuseUnderSupervisor(self.upgrader.supervisor, description)
        listener = self.upgrader.listen(description)
        self.admin = ServiceAdmin(
            self.upgrader, lambda: self.connections, lambda: self.finalStop
        )
        return self._listenOwn(listener, self.admin.site)

    def _listenOwn(
        self, description: ListenSpec | Listener, factory: IProtocolFactory
    ) -> Listener:
        """
        Serve one of txflip's own factories: handed over and drained like the
        application's, but not counted among its connections.
        """
        listener = (
            description
            if isinstance(description, Listener)
            else self.upgrader.listen(description)
        )
        tracker = ConnectionTracker(factory, self._reactor)
        self._controls.append((listener, tracker, tracker))
        if self._adopted:
            listener.adoptStream(self._reactor, tracker)
        return listener

    def listenDatagram(
        self, description: str | ListenSpec, protocol: DatagramProtocol
    ) -> Listener:
        """
        Serve datagram C{protocol} on a C{udp}/C{udp6} description.
        """
        listener = self.upgrader.listen(description)
        if listener.spec.stream:
            raise ListenError(
                f"cannot serve datagrams on {listener.spec}: not a datagram listener"
            )
        self._datagrams.append((listener, protocol))
        if self._adopted:
            listener.adoptDatagram(self._reactor, protocol)
        return listener

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._installSignalHandlers()
        self._adopt()

    def startService(self) -> None:
        super().startService()
        # Outside twistd, privilegedStartService may never have been called.
        self._installSignalHandlers()
        self._adopt()
        self._moves.receive()
        self.upgrader.whenParentExited().addCallback(self._parentExited)
        self.upgrader.whenExit().addCallback(self._exit)
        self._reactor.callWhenRunning(self._ready)

    def _adopt(self) -> None:
        if self._adopted:
            return
        self._adopted = True
        for listener, _, served in self._streams + self._controls:
            listener.adoptStream(self._reactor, served)
            self._logListening(listener)
        for listener, protocol in self._datagrams:
            listener.adoptDatagram(self._reactor, protocol)
            self._logListening(listener)
        fd = self.upgrader.claimInheritedFD(BALANCE)  # txflip run's workers only
        self._balancer = balanceWorker(self._reactor, fd, self._streams)

    def _logListening(self, listener: Listener) -> None:
        how = "inherited" if listener.inherited else "new"
        if (supervisor := self.upgrader.supervisor) is not None:
            how = (
                f"from the supervisor pid {supervisor.supervisorPID}"  # binds them all
            )
        self._log.info(
            "txflip: listening on {spec} ({how})", spec=listener.spec, how=how
        )

    def _installSignalHandlers(self) -> None:
        if not self._installSignals:
            return
        self._installSignals = False

        def later(handler: Callable[[], None]) -> Callable[[int, object], None]:
            # A signal handler only hands over to the reactor.
            return lambda signum, frame: self._reactor.callFromThread(handler)

        signal.signal(signal.SIGHUP, later(self._onHUP))
        signal.signal(signal.SIGQUIT, later(self._onQUIT))
        # Our parent started us with these blocked: one that came early is
        # delivered now, to its handler.  The others wait for the reactor's.
        releaseSignals(signal.SIGHUP, signal.SIGQUIT)

    def _onHUP(self) -> None:
        self._log.info("txflip: SIGHUP: upgrading")
        self.upgrade().addErrback(self._upgradeBroke)

    def _upgradeBroke(self, reason: Failure) -> None:
        """
        An upgrade's failure is reported where it happens; anything else is a bug,
        and must not vanish with the signal.
        """
        if not reason.check(UpgradeError):
            self._log.failure("txflip: SIGHUP: the upgrade broke", reason)

    def _onQUIT(self) -> None:
        self._log.info("txflip: SIGQUIT: stopping gracefully")
        self._stopReactor()

    def upgrade(self, join: bool = False) -> Deferred[int]:
        """
        Upgrade now; fires with the new pid, or fails (logged, and told to systemd:
        L{Reports.upgrade}) with the reason.

        @param join: if an upgrade is already in progress, wait for its outcome
            instead of being refused (what C{txflip upgrade} wants).
        """
        return self.reports.upgrade(join)

    def _ready(self) -> None:
        try:
            self.upgrader.ready()
        except TxflipError as e:
            self.fatal(str(e))
            return
        self.reports.ready()
        logContext.ready()  # the upgrade that started us is over, for us
        if self.admin is not None:
            self.admin.ready()

    def fatal(self, message: str) -> None:
        """
        Log C{message}, stop gracefully, and exit with status 1.
        """
        self._log.critical("txflip: {message}", message=message)
        tellParentError(message)
        if not self._failed:
            self._failed = True
            self._reactor.addSystemEventTrigger("after", "shutdown", _exitFailed)
        self._stopReactor()

    def _parentExited(self, _: object) -> None:
        if self.upgrader.hasParent:
            self._log.info("txflip: previous generation exited; upgrades allowed")

    def _exit(self, _: object) -> None:
        self._stopReactor()

    def _stopReactor(self) -> None:
        # Not once stopService has begun: the reactor is stopping already.
        if self._reactor.running and self.running:
            self._reactor.stop()

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting, drain every connection, then let the process exit.  After an
        upgrade, only our copies of the listening sockets are closed; on a final
        stop the Unix paths and the pid file are removed as well.
        """
        if self._stopping is None:
            super().stopService()
            self._stopping = ensureDeferred(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        self._moves.stopReceiving()
        await self.upgrader.stop()
        final = self.upgrader.successor is None
        # Unix paths are removed only by a generation that served them: one that
        # failed before it was ready leaves them to its parent.
        unlink = final and (self.upgrader.isReady or not self.upgrader.hasParent)
        if final:
            self.notifier.stopping(f"stopping: draining {self.connections} connections")
        if self._balancer is not None:
            self._balancer.stop()
        await self.upgrader.listeners.stopListening()
        self.upgrader.listeners.close(unlink=unlink)
        self._log.info(
            "txflip: stopped listening ({why})",
            why="final stop" if final else f"pid {self.upgrader.successor} serves now",
        )
        trackers = [tracker for _, tracker, _ in self._streams + self._controls]
        mover = self._moves.mover()
        opened = self.connections
        # All at once: one idle grace and one drain timeout for the whole process.
        cuts = await drainAll(trackers, self.idleGrace, self.drainTimeout, mover)
        cut = sum(cuts)
        if mover is not None:
            self._moves.moved(mover)
        self._counted(
            opened, mover.moved if mover else 0, sum(cuts[: len(self._streams)])
        )
        pidFile = self.upgrader.pidFile
        if final and pidFile is not None:
            pidFile.removeIfOurs(os.getpid())
        self._log.info(
            "txflip: generation {generation} finished (pid {pid}){cut}",
            generation=self.upgrader.generation,
            pid=os.getpid(),
            cut=f"; {cut} connections aborted at the drain timeout" if cut else "",
        )

    def _counted(self, opened: int, moved: int, aborted: int) -> None:
        """
        Count what became of our connections: in our metrics, or (a worker of
        C{txflip run}) in the supervisor's.
        """
        drain = drained(opened, moved, aborted)
        if self.admin is not None:
            self.admin.finished(drain)
        elif (supervisor := self.upgrader.supervisor) is not None:
            supervisor.report(drain.toWire())


def _exitFailed() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
