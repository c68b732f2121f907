"""
C{txflip run [options] -- COMMAND [ARG...]}: the stable-PID supervisor.

This process owns the service's PID, its pid file, its control socket, its
conversation with systemd and every listening socket; it runs N workers of
COMMAND (each a txflip program: flipecho, a C{flip:} endpoint, an
L{UpgradeService}) and replaces them on C{SIGHUP} or C{txflip upgrade}.  It imports
Twisted for the reactor, C{spawnProcess} and txflip's own spawning, handoff and
control code -- never the application's.

Signals: C{HUP} upgrades; C{QUIT}, C{TERM} and C{INT} stop gracefully (every worker
drains, then exit 0); C{TTIN}/C{TTOU} add/remove a worker; C{USR1} is forwarded to
the workers (log reopen).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from txflip._cli import argNumber, argSeconds
from txflip._reactor import reactorOrGlobal
from txflip._settings import DEFAULT_UPGRADE_TIMEOUT
from txflip.run._balance import MAX_WORKERS

if TYPE_CHECKING:  # imported when used: the supervisor stays small
    from txflip.generation._command import Command
    from txflip.run._preload import Preloader

DEFAULT_PROBATION = 5.0
#: Seconds a retiring worker has, after C{SIGQUIT}, to exit before the supervisor
#: kills it (C{--drain-timeout}).  Not the worker's own drain timeout
#: (L{txflip._settings.DEFAULT_DRAIN_TIMEOUT}, 30 s, its wait for its
#: connections): longer, so that a worker's own drain ends before the kill.
DEFAULT_WORKER_EXIT_TIMEOUT = 60.0
_FORWARDED = ("USR1",)


class RunError(Exception):
    """
    Reported as one line, exit status 1; nothing is left behind.
    """


def resolve(command: list[str]) -> str:
    """
    The executable for C{command}, as a shell would find it.
    """
    if command and command[0] == "--":
        command.pop(0)
    if not command:
        raise RunError("no command given (txflip run [options] -- COMMAND [ARG...])")
    found = shutil.which(command[0])
    if found is None:
        raise RunError(f"command not found: {command[0]}")
    return os.path.abspath(found)


class _Run:
    """
    One run of the supervisor: set up, serve, clean up.
    """

    def __init__(
        self, args: argparse.Namespace, executable: str, reactor: object | None = None
    ) -> None:
        """
        @param reactor: the reactor to run on (default: Twisted's global one).
        """
        from txflip import _log
        from txflip.generation._command import Command
        from txflip.generation._pidfile import PidFile
        from txflip.listen._addresses import ListenSpec
        from txflip.listen._fds import Listeners, bindSocket
        from txflip.run._supervisor import Supervisor
        from txflip.run._workers import PRIVATE_VARIABLES, Sockets, spawnWorker
        from txflip.systemd import Notifier, listenFDs

        self.reactor = reactorOrGlobal(reactor)
        self.status = 0
        self.pidFile = PidFile(args.pidfile) if args.pidfile else None
        self.controlSock = None
        if self.pidFile is not None:
            self.pidFile.check()
        notifier = Notifier.fromEnvironment()
        inherited = listenFDs(os.environ)
        listeners = Listeners(inherited)
        # Claim every socket systemd passed, so that each worker inherits it.
        for entry in inherited:
            listeners.listen(ListenSpec("systemd", alias=entry.aliases[0]))
        self.sockets = Sockets(listeners)
        environ = {k: v for k, v in os.environ.items() if k not in PRIVATE_VARIABLES}
        command = Command(executable, tuple(args.command), os.getcwd())
        self.preloader, self.execWhy = preloader(command, args.preload, args.warm)
        self.supervisor = Supervisor(
            self.reactor,
            command,
            environ,
            self.sockets,
            workers=args.workers,
            upgradeTimeout=args.upgrade_timeout,
            probation=args.probation,
            drainTimeout=args.drain_timeout,
            notifier=notifier,
            balance=not args.no_balance,
            spawner=self.preloader or spawnWorker,
            together=self.preloader is not None,
        )
        self.controlSpec = ListenSpec(
            "unix", path=os.path.abspath(args.control or "."), mode=0o600
        )
        if args.control:
            self.controlSock = bindSocket(self.controlSpec)  # ListenError: one line
        self.admin = self.adminSock = None
        if args.admin:
            from txflip.run._admin import RunAdmin, bindAdmin

            self.adminSock = bindAdmin(args.admin)
            self.admin = RunAdmin(self.supervisor)
        from twisted.logger import Logger, globalLogBeginner

        from txflip._jsonlog import context, jsonObserver

        context.generation = 1  # the workers' generation, on the supervisor's lines
        observer = jsonObserver if args.log_format == "json" else _log.pidObserver
        globalLogBeginner.beginLoggingTo(
            [observer(sys.stdout)], redirectStandardIO=False
        )
        if self.execWhy is not None:
            Logger().info(
                "txflip run: not preloading: {why}; each worker is started anew",
                why=self.execWhy,
            )
        self._installSignals()

    def _installSignals(self) -> None:
        actions: dict[str, Callable[[], object]] = {
            "HUP": self._onHUP,
            "QUIT": self._onStop,
            "TERM": self._onStop,
            "INT": self._onStop,
            "TTIN": lambda: self.supervisor.resize(+1),
            "TTOU": lambda: self.supervisor.resize(-1),
        }
        if self.admin is not None:
            actions["USR2"] = self.admin.quiesce
        for name in _FORWARDED:
            actions[name] = partial(self.supervisor.signalWorkers, name)
        for name, action in actions.items():
            number = getattr(signal, f"SIG{name}", None)
            if number is not None:
                signal.signal(number, partial(self._onSignal, action))

    def _onSignal(self, action: Callable[[], object], signum: int, frame: Any) -> None:
        # A signal handler only hands over to the reactor.
        self.reactor.callFromThread(action)

    def _onHUP(self) -> None:
        from twisted.logger import Logger

        log = Logger()
        log.info("txflip run: SIGHUP: upgrading")
        self.supervisor.upgrade().addErrback(
            lambda f: log.warn(
                "txflip run: upgrade: {reason}", reason=f.getErrorMessage()
            )
        )

    def _onStop(self) -> None:
        self.supervisor.stop()

    def _serveControl(self) -> Any:
        from txflip.control._server import ControlFactory
        from txflip.drain._tracker import ConnectionTracker
        from txflip.listen._fds import Listener

        assert self.controlSock is not None
        tracker = ConnectionTracker(ControlFactory(self.supervisor), self.reactor)
        listener = Listener(
            self.controlSpec, self.controlSpec, self.controlSock, inherited=False
        )
        listener.adoptStream(self.reactor, tracker)
        return listener, tracker

    def run(self) -> int:
        from txflip.run._reaper import Reaper, becomeSubreaper

        if self.pidFile is not None:
            self.pidFile.write(os.getpid())
        if os.getpid() != 1:
            becomeSubreaper()
        preloader = self.preloader

        def ours() -> set[int]:
            pids = {w.pid for w in self.supervisor.workers}
            return pids | preloader.pids() if preloader is not None else pids

        reaper = Reaper(self.reactor, ours)
        control = self._serveControl() if self.controlSock is not None else None
        admin = None
        if self.admin is not None and self.adminSock is not None:
            from txflip.run._admin import serveAdmin

            admin = serveAdmin(self.reactor, self.adminSock, self.admin)

        def failed(reason: Any) -> None:
            if self.supervisor.failure is not None:
                self.status = 1
                print(f"txflip run: {self.supervisor.failure}", file=sys.stderr)

        def stopped(_: object) -> Any:
            return self._cleanUp([control, admin], reaper)

        def begin() -> None:
            # Twisted installed its SIGINT/SIGTERM handlers as it started: ours win.
            self._installSignals()
            reaper.start()
            self.supervisor.start().addErrback(failed)
            self.supervisor.whenStopped().addCallback(stopped)

        self.reactor.callWhenRunning(begin)
        self.reactor.run()
        return self.status

    async def _drainControl(self, control: Any) -> None:
        from txflip.drain._tracker import drainAll

        listener, tracker = control
        await listener.stopListening()
        await drainAll([tracker], 0.1, 2.0)
        listener.close(unlink=True)

    def _cleanUp(self, controls: list[Any], reaper: Any) -> Any:
        from twisted.internet.defer import Deferred

        async def cleanUp() -> None:
            reaper.stop()
            for control in controls:
                if control is not None:
                    await self._drainControl(control)
            self.sockets.listeners.close(unlink=True)
            if self.preloader is not None:
                await self.preloader.close()
            if self.pidFile is not None:
                self.pidFile.removeIfOurs(os.getpid())
            reaper.reapNow()
            self.reactor.stop()

        return Deferred.fromCoroutine(cleanUp())


def preloader(
    command: Command, wanted: bool | None, warm: bool | None = None
) -> tuple[Preloader | None, str | None]:
    """
    The preloading spawner for C{command} (L{txflip.run._preload}), and why
    there is none, if there is none (L{None} for both when it was not wanted).

    @param wanted: C{--preload} (True), C{--no-preload} (False), or neither
        (L{None}: preload if the command can be).
    @param warm: C{--warm} (True: keep the zygote between upgrades),
        C{--no-warm} (False), or neither (L{None}: keep it).
    @raise RunError: C{--preload} or C{--warm}, and it cannot be.
    """
    if wanted is False:
        if warm:
            raise RunError("--warm needs preloading; drop --no-preload")
        return None, None
    from txflip.run._runners import preloadable

    runner = preloadable(command)
    if isinstance(runner, str):
        if wanted or warm:
            raise RunError(f"--{'warm' if warm else 'preload'}: {runner}")
        return None, runner
    from txflip.run._preload import Preloader

    return Preloader(runner, warm is not False), None


def withoutTLS() -> None:
    """
    The supervisor never speaks TLS: keep pyOpenSSL (and cryptography's native
    library, about 12 MiB of RSS) out of it.  Twisted's TCP support imports its TLS
    layer only if it can (C{twisted.internet.tcp}: C{except ImportError}), and the
    workers, separate programs, are not affected.
    """
    if "OpenSSL" not in sys.modules and "twisted.internet.reactor" not in sys.modules:
        sys.modules["OpenSSL"] = None  # type: ignore[assignment]


def main(args: argparse.Namespace) -> int:
    from txflip._errors import TxflipError

    withoutTLS()

    try:
        executable = resolve(args.command)
    except RunError as e:
        print(f"txflip run: {e}", file=sys.stderr)
        return 2
    try:
        run = _Run(args, executable)
    except (TxflipError, RunError) as e:
        print(f"txflip run: {e}", file=sys.stderr)
        return 1
    return run.run()


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a service under a stable-PID supervisor",
        description="Run N workers of COMMAND (a txflip server) under a supervisor"
        " that owns the listening sockets and the PID: SIGHUP or `txflip upgrade`"
        " replaces the workers one by one, QUIT/TERM/INT stop gracefully,"
        " TTIN/TTOU add/remove a worker, USR1 is forwarded.",
        usage="txflip run [options] -- COMMAND [ARG...]",
    )
    parser.add_argument(
        "--workers",
        type=argNumber(
            int,
            1,
            f"expected a whole number of workers from 1 to {MAX_WORKERS}",
            MAX_WORKERS,
        ),
        default=1,
        metavar="N",
        help=f"how many workers, 1 to {MAX_WORKERS} (default 1)",
    )
    parser.add_argument(
        "--preload",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start each generation's workers by forking one process that"
        " imported the application (a twistd, python -m or Python script"
        " command, on Linux): the default where it can; --no-preload starts"
        " each worker anew",
    )
    parser.add_argument(
        "--warm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with preloading, keep the interpreter that imported Twisted, txflip"
        " and the endpoint plugins (not the application) between upgrades, and"
        " fork each upgrade's template from it while no file or directory it"
        " imported from has changed (else a fresh one replaces it): an upgrade"
        " costs a fork and the application's imports instead of an interpreter's"
        " start; the default where preloading is; --no-warm starts a fresh"
        " interpreter for every upgrade",
    )
    parser.add_argument("--pidfile", metavar="PATH", help="write our pid there")
    parser.add_argument(
        "--no-balance",
        action="store_true",
        help="let whichever worker is awake take each connection, instead of"
        " spreading connections across the workers by the number each holds",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text (with the PID) or json: one object a line, with pid, generation"
        " and the upgrade_id its new workers' lines share (their own format is"
        " their command's option)",
    )
    parser.add_argument(
        "--admin",
        metavar="DESCRIPTION",
        help="serve /metrics, /livez and /readyz over HTTP there, e.g."
        " tcp:9100:interface=127.0.0.1 (SIGUSR2 then fails /readyz ahead of a stop)",
    )
    parser.add_argument(
        "--control",
        metavar="PATH",
        help="control socket (mode 0600) for `txflip upgrade` and `txflip status`",
    )
    for name, default, text in (
        ("upgrade-timeout", DEFAULT_UPGRADE_TIMEOUT, "a new worker has to be ready"),
        ("probation", DEFAULT_PROBATION, "new workers are watched after an upgrade"),
        ("drain-timeout", DEFAULT_WORKER_EXIT_TIMEOUT, "a stopping worker has to exit"),
    ):
        parser.add_argument(
            f"--{name}",
            type=argSeconds
            if name != "probation"
            else argNumber(float, 0, "expected a finite number of seconds >= 0"),
            default=default,
            metavar="S",
            help=f"seconds {text} (default {default:g})",
        )
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
    parser.set_defaults(func=main)

    def oneLine(message: str) -> Any:
        parser.exit(2, f"txflip run: {message}\n")

    # Bad input is one line, not argparse's usage block.
    setattr(parser, "error", oneLine)  # noqa: B010
