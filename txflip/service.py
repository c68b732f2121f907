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
from functools import partial
from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IProtocolFactory, IReactorCore
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
from txflip._settings import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_IDLE_GRACE,
    DEFAULT_REQUEST_TIMEOUT,
    seconds,
)
from txflip.control._reports import Reports
from txflip.drain._served import Served
from txflip.drain._tracker import ConnectionTracker, drainAll
from txflip.generation._handoff import BALANCE
from txflip.generation._machine import Upgrader
from txflip.generation._process import tellParentError
from txflip.generation._signals import releaseSignals
from txflip.listen._addresses import ListenSpec
from txflip.listen._fds import Listener
from txflip.move._service import ServiceMoves
from txflip.systemd import Notifier

if TYPE_CHECKING:
    from txflip.control._admin import ServiceAdmin
    from txflip.run._balance import Balancer


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
        reactor: IReactorCore | None = None,
        installSignalHandlers: bool = True,
        notifier: Notifier | None = None,
        move: bool = True,
    ) -> None:
        """
        @param reactor: defaults to the upgrader's (the one reactor of the
            process).  Typed by Twisted's core interface, which Twisted's own
            global reactor is typed as providing; txflip also uses its socket,
            process and file descriptor interfaces, which every POSIX reactor has.
        @param move: move connections whose protocol provides L{IMovable} to the
            next generation instead of draining them, and take those the previous
            generation moves (L{False}: they all drain, as before).
        """
        self.upgrader = upgrader
        self._reactor = upgrader.reactor if reactor is None else asReactor(reactor)
        self.drainTimeout = seconds("drainTimeout", drainTimeout)
        self.idleGrace = seconds("idleGrace", idleGrace)
        self.move = move
        self._installSignals = installSignalHandlers
        self._ownsSignals = installSignalHandlers
        self._streams: list[Served] = []
        self._controls: list[Served] = []
        self._moves = ServiceMoves(upgrader, self._reactor, self._streams, move)
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
        return sum(len(each.tracker) for each in self._streams)

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
        self._streams.append(Served.serving(listener, tracker, served))
        if self._adopted:
            listener.adoptStream(self._reactor, served)
            self._logListening(listener)
        return listener

    def listenControl(
        self, path: str, requestTimeout: float = DEFAULT_REQUEST_TIMEOUT
    ) -> Listener:
        """
        Open the control socket at C{path} (mode 0600) for C{txflip upgrade} and
        C{txflip status}.
        """
        # Imported by a server that has a control socket only.
        from txflip.control._server import ControlFactory

        self.upgrader.parent.checkControl(path)
        spec = ListenSpec("unix", path=os.path.abspath(path), mode=0o600)
        return self._listenOwn(spec, ControlFactory(self, requestTimeout))

    def listenAdmin(self, description: str) -> Listener:
        """
        Serve the admin endpoint (L{txflip.control._admin}: C{/metrics},
        C{/livez}, C{/readyz}) on C{description}.
        """
        from txflip.control._admin import ServiceAdmin

        self.upgrader.parent.checkAdmin(description)
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
        # Never moved: not among the streams the mover sees.
        self._controls.append(Served(listener, tracker, tracker, movable=False))
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
        self._moves.claim()
        self.upgrader.whenParentExited().addCallback(self._parentExited)
        self.upgrader.whenExit().addCallback(self._exit)
        self._reactor.callWhenRunning(self._ready)

    def _adopt(self) -> None:
        if self._adopted:
            return
        self._adopted = True
        for each in self._streams + self._controls:
            each.listener.adoptStream(self._reactor, each.factory)
            self._logListening(each.listener)
        for listener, protocol in self._datagrams:
            listener.adoptDatagram(self._reactor, protocol)
            self._logListening(listener)
        fd = self.upgrader.claimInheritedFD(BALANCE)  # txflip run's workers only
        if fd is not None:  # and only they import the balancing
            from txflip.run._balance import balanceWorker

            self._balancer = balanceWorker(self._reactor, fd, self._streams)

    def _logListening(self, listener: Listener) -> None:
        self._log.info(
            "txflip: listening on {spec} ({how})",
            spec=listener.spec,
            how=self.upgrader.parent.listenedFrom(listener),
        )

    def _installSignalHandlers(self) -> None:
        if not self._installSignals:
            return
        self._installSignals = False

        signal.signal(signal.SIGHUP, self._later(self._onHUP))
        signal.signal(signal.SIGQUIT, self._later(self._onQUIT))
        # Our parent started us with these blocked: one that came early is
        # delivered now, to its handler.  The others wait for the reactor's.
        releaseSignals(signal.SIGHUP, signal.SIGQUIT)

    def _later(self, handler: Callable[[], None]) -> Callable[[int, object], None]:
        # A signal handler only hands over to the reactor.
        return lambda signum, frame: self._reactor.callFromThread(handler)

    def _quietWhileStopping(self) -> None:
        """
        Once this generation stops (after an upgrade, or for good), SIGTERM and
        SIGINT have nothing left to do: the reactor is stopping already, and the
        runner's own handlers would stop it again, which Twisted answers with a
        C{ReactorNotRunning} traceback in the log.  Say so instead; the drain
        goes on to its deadline.
        """
        if not self._ownsSignals:
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._later(partial(self._stoppingAlready, signum)))

    def _stoppingAlready(self, signum: int) -> None:
        self._log.info(
            "txflip: {name}: stopping already (draining)",
            name=signal.Signals(signum).name,
        )

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
        # On the next turn: a SIGTERM that came with this one has queued
        # Twisted's own stop behind us, and it then goes first.
        self._quietWhileStopping()
        self._reactor.callLater(0, self._stopReactor)

    def upgrade(self, join: bool = False) -> Deferred[int]:
        """
        Upgrade now; fires with the new pid, or fails (logged, and told to systemd:
        L{Reports.upgrade}) with the reason.

        @param join: if an upgrade is already in progress, wait for its outcome
            instead of being refused (what C{txflip upgrade} wants).
        """
        upgraded = self.reports.upgrade(join)
        self._reactor.callLater(0, self._moves.prepare)  # once the spawn is off
        return upgraded

    def _ready(self) -> None:
        try:
            self.upgrader.ready()
        except TxflipError as e:
            self.fatal(str(e))
            return
        # Before the reactor reads anything: the previous generation moves
        # connections only once it hears that we serve.
        self._moves.receive()
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
        """
        Stop the reactor (and with it, gracefully, this service), unless it is
        stopping already: not once stopService has begun, nor after Twisted's
        own stop for a SIGINT or SIGTERM that came first (Ctrl-C or C{timeout}
        reach a whole process group: with C{txflip run}, every worker hears
        the SIGINT, then its supervisor's SIGQUIT), which the reactor answers
        with L{ReactorNotRunning}.  From now on, those signals only say so.
        """
        if self._reactor.running and self.running:
            self._quietWhileStopping()
            try:
                self._reactor.stop()
            except ReactorNotRunning:
                pass

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting, drain every connection, then let the process exit.  After an
        upgrade, only our copies of the listening sockets are closed; on a final
        stop the Unix paths and the pid file are removed as well.
        """
        if self._stopping is None:
            super().stopService()
            self._quietWhileStopping()
            self._stopping = ensureDeferred(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        self._moves.stopReceiving()
        await self.upgrader.stop()
        ending = await self.upgrader.whenExit()  # at once, now that we stopped
        final = ending.final
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
            why=f"pid {ending.successor.pid} serves now"
            if ending.successor
            else "final stop",
        )
        trackers = [each.tracker for each in self._streams + self._controls]
        mover = self._moves.mover(ending)
        opened = self.connections
        # All at once: one idle grace and one drain timeout for the whole process.
        cuts = await drainAll(trackers, self.idleGrace, self.drainTimeout, mover)
        cut = sum(cuts)
        if mover is not None:
            self._moves.moved(mover, ending)
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
        from txflip.control._metrics import drained  # at the end only

        drain = drained(opened, moved, aborted)
        if self.admin is not None:
            self.admin.finished(drain)
        else:
            # A worker of txflip run: the supervisor counts (a previous
            # generation has nothing to count for us).
            self.upgrader.parent.report(drain.toWire())


def _exitFailed() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
