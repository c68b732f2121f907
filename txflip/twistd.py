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

import os
from typing import Any, NoReturn

from twisted.python import usage

from . import _handoff
from ._drain import DEFAULT_DRAIN_TIMEOUT, DEFAULT_IDLE_GRACE
from ._errors import TxflipError
from ._log import configureTwistd, twistdObserverFactory
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
    _handoff.tellParentError(message)
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
