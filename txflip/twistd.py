"""
Making twistd fit a process that replaces itself.

twistd assumes one process per pid file and per log file, forever.  A txflip
service's L{UpgradeOptions} adjusts twistd's own configuration (reached through
C{self.parent} in C{postOptions}, which runs before twistd checks or writes anything):

  - the pid file: twistd's check would refuse the next generation ("Another twistd
    server is running") and its exit-time cleanup would delete the successor's file.
    We take the path over (C{twistd.pid} by default, or C{--pidfile}) and clear
    twistd's setting; the L{Upgrader} checks it, writes it atomically at ready and
    removes it only on a final stop.
  - daemonizing: a next generation started with the same command line would
    daemonize again and leave the process we spawned; it is kept in the foreground.
  - logging: every line carries the PID, and generations append to one file.  An
    explicit C{--logger} is respected as it is.
"""

from __future__ import annotations

import dataclasses
import getopt
import json
import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, NoReturn

from twisted.python import usage

from . import _handoff, _log
from ._drain import DEFAULT_DRAIN_TIMEOUT, DEFAULT_IDLE_GRACE
from ._errors import TxflipError
from ._log import configureTwistd, twistdObserverFactory
from ._process import tellParentError
from ._spawn import Command
from ._upgrader import DEFAULT_UPGRADE_TIMEOUT, Upgrader
from .service import UpgradeService


def _positive(name: str) -> Any:
    def check(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not number > 0:
            raise ValueError(f"--{name} must be a positive number of seconds")
        return number

    return check


class UpgradeOptions(usage.Options):
    """
    Options every upgradable twistd plugin shares; subclass it for your plugin's
    C{Options} (and call C{super().postOptions()} if you override it).
    """

    optParameters: list[list[Any]] = [
        [
            "control",
            None,
            None,
            "Path of a control socket (mode 0600) for `txflip upgrade` and"
            " `txflip status`.",
        ],
        [
            "upgrade-timeout",
            None,
            DEFAULT_UPGRADE_TIMEOUT,
            "Seconds a new generation has to become ready before it is killed.",
            _positive("upgrade-timeout"),
        ],
        [
            "drain-timeout",
            None,
            DEFAULT_DRAIN_TIMEOUT,
            "Seconds an exiting generation waits for connections to finish.",
            _positive("drain-timeout"),
        ],
        [
            "idle-grace",
            None,
            DEFAULT_IDLE_GRACE,
            "Seconds an idle connection is kept while draining, to be closed with"
            " the reply to its next request.",
            _positive("idle-grace"),
        ],
    ]

    def postOptions(self) -> None:
        self["pidfile"] = None
        twistd = self.parent
        if twistd is None:
            return
        pidfile = twistd.get("pidfile")
        if pidfile:
            self["pidfile"] = os.path.abspath(pidfile)
        twistd["pidfile"] = ""
        nodaemon = bool(twistd.get("nodaemon"))
        if _handoff.MARKER in os.environ:
            twistd["nodaemon"] = True
        if not twistd.get("logger"):
            twistd["logger"] = configureTwistd(
                twistdObserverFactory(
                    twistd.get("logfile"),
                    nodaemon,
                    bool(twistd.get("syslog")),
                    twistd.get("prefix") or "twisted",
                )
            )


def failStartup(message: str) -> NoReturn:
    """
    Exit with C{message} on one line; a later generation also tells its parent,
    whose failed upgrade then names the reason.
    """
    tellParentError(message)
    raise SystemExit(f"txflip: {message}")


def makeUpgradeService(options: UpgradeOptions) -> UpgradeService:
    """
    The L{UpgradeService} configured by C{options}.

    @raise SystemExit: with a one-line message when the inherited state or the pid
        file is unusable.
    """
    try:
        upgrader = Upgrader(
            pidFile=options.get("pidfile"),
            upgradeTimeout=options["upgrade-timeout"],
        )
    except TxflipError as e:
        failStartup(str(e))
    service = UpgradeService(
        upgrader,
        drainTimeout=options["drain-timeout"],
        idleGrace=options["idle-grace"],
    )
    if options.get("control"):
        try:
            service.listenControl(options["control"])
        except TxflipError as e:
            upgrader.listeners.close(unlink=False)
            failStartup(str(e))
    return service


# --- for code that cannot subclass UpgradeOptions: the flip: endpoint -------------

#: Carries the first generation's twistd settings to later generations.
SETTINGS_VARIABLE = "TXFLIP_TWISTD"


@dataclass(frozen=True)
class TwistdSettings:
    """
    What later generations must know of the first generation's twistd options.

    @ivar nodaemon: whether the I{first} generation ran in the foreground (it
        decides where logs go; later generations always run in the foreground).
    @ivar ownLogger: the user gave C{--logger}; we leave logging alone.
    """

    pidfile: str | None
    logfile: str | None
    nodaemon: bool
    syslog: bool
    prefix: str
    ownLogger: bool

    def observerFactory(self) -> Any:
        return twistdObserverFactory(
            self.logfile, self.nodaemon, self.syslog, self.prefix or "twisted"
        )


def _runner() -> Any:
    """
    The twistd application runner that is building this process's application, if
    any: C{makeService} (where endpoint descriptions are parsed) is called from its
    C{run()}, so it is on the stack.
    """
    from twisted.application.app import ApplicationRunner

    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ApplicationRunner):
            return candidate
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _subcommandIndex(config: Any, args: list[str]) -> int:
    """
    Where the subcommand (C{web}, C{flipecho}) stands in twistd's arguments: after
    the options twistd itself parsed, found the way twistd finds it (getopt, which
    also accepts abbreviated long options).
    """
    try:
        _, rest = getopt.getopt(args, config.shortOpt, config.longOpt)
    except getopt.GetoptError:
        return len(args)
    return len(args) - len(rest)


def takeOverTwistd(
    environ: MutableMapping[str, str],
) -> tuple[TwistdSettings, Command] | None:
    """
    Adapt a running twistd for upgrades from inside C{makeService}, where options
    can no longer be changed the public way.

    In the first generation we find twistd's runner and take the pid file over
    (twistd has checked it already; it will now neither write it nor remove it at
    exit), and give its logger our PID-stamped observer.  Later generations are
    started with C{--pidfile= --nodaemon} (and our C{--logger}) inserted before the
    subcommand, so twistd's own pid check never refuses them, and learn the real
    settings from L{SETTINGS_VARIABLE}.

    @return: L{None} when this process is not twistd.
    """
    # Read once and removed: the application's own subprocesses must not believe
    # they are a later generation of a twistd.
    encoded = environ.pop(SETTINGS_VARIABLE, None)
    if encoded is not None:
        try:
            settings = TwistdSettings(**json.loads(encoded))
        except (ValueError, TypeError):
            failStartup(f"malformed {SETTINGS_VARIABLE} in the environment")
    else:
        runner = _runner()
        if runner is None:
            return None
        config = runner.config
        settings = TwistdSettings(
            pidfile=os.path.abspath(config["pidfile"])
            if config.get("pidfile")
            else None,
            logfile=config.get("logfile") or None,
            nodaemon=bool(config.get("nodaemon")),
            syslog=bool(config.get("syslog")),
            prefix=config.get("prefix") or "twisted",
            ownLogger=bool(config.get("logger")),
        )
        config["pidfile"] = ""
        if not settings.ownLogger:
            runner.logger._observerFactory = settings.observerFactory()
        encoded = json.dumps(dataclasses.asdict(settings))
        args = list(sys.argv[1:])
        position = _subcommandIndex(config, args)
        current = Command.current()
        insertAt = len(current.args) - len(args) + position
        overrides = ["--pidfile=", "--nodaemon"]
        if not settings.ownLogger:
            overrides.append(f"--logger={_log.__name__}.twistdObserver")
        command = dataclasses.replace(
            current,
            args=(*current.args[:insertAt], *overrides, *current.args[insertAt:]),
            extraEnv=((SETTINGS_VARIABLE, encoded),),
        )
        return settings, command
    # A later generation: its command line already has the overrides.
    command = dataclasses.replace(
        Command.current(), extraEnv=((SETTINGS_VARIABLE, encoded),)
    )
    return settings, command
