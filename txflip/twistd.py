"""
Making twistd (and twist) fit a process that replaces itself, through their own
options only.

twistd assumes one process per pid file and per log file, forever.  A txflip
plugin's options, L{UpgradeOptions} (flipecho's, and those of the C{flip}
meta-plugin below, which runs any other plugin with upgrades), adjust the runner's
configuration, reached through C{self.parent}: C{usage.Options} parses a
subcommand and calls its C{postOptions} before the runner's own, before twistd
checks the pid file, starts logging or daemonizes.  Every generation parses the
same command line and makes the same choices from it; nothing travels beside it.

Under twistd:
  - the pid file: twistd's check would refuse the next generation ("Another twistd
    server is running") and its exit-time cleanup would delete the successor's
    file.  We take the path over (C{twistd.pid} by default, or C{--pidfile}) and
    clear twistd's setting; the L{Upgrader} checks it, writes it atomically at
    ready and removes it only on a final stop.
  - daemonizing: a next generation started with the same command line would
    daemonize again and leave the process we spawned; it is kept in the
    foreground (it logs where the first generation did).
  - logging: every line carries the PID, and generations append to one file.  The
    observer is set as the application's C{ILogObserver} component (twistd's
    documented way for an application to choose its observer) when twistd adds
    our root service to the application.  An explicit C{--logger} wins, as twistd
    prefers it.

Under twist (no pid file, no daemonizing), text log lines get the PID too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from operator import attrgetter
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.logger import ILogObserver, textFileLogObserver
from twisted.python import usage
from twisted.python.components import Componentized

from txflip._endpoint import useService
from txflip._errors import TxflipError
from txflip._jsonlog import jsonObserver, tagUpgrades
from txflip._log import pidObserver, twistdObserverFactory
from txflip._settings import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_IDLE_GRACE,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_UPGRADE_TIMEOUT,
    SettingError,
    seconds,
)
from txflip.generation import _handoff
from txflip.generation._machine import Upgrader
from txflip.generation._process import failStartup
from txflip.service import UpgradeService


def _duration(name: str) -> Callable[[str], float]:
    def check(value: str) -> float:
        try:
            return seconds(f"--{name}", value)
        except SettingError as e:
            raise ValueError(str(e)) from None

    return check


def _logFormat(value: str) -> str:
    if value not in ("text", "json"):
        raise ValueError(f"--log-format: expected text or json, not {value!r}")
    return value


class UpgradeOptions(usage.Options):
    """
    Options every upgradable twistd plugin shares; subclass it for your plugin's
    C{Options} (and call C{super().postOptions()} if you override it).

    @ivar observerFactory: under twistd, makes the PID-stamped log observer that
        twistd's own options ask for.
    """

    optFlags: list[list[Any]] = [
        [
            "no-move",
            None,
            "Drain every connection at an upgrade instead of moving those whose"
            " protocol can move to the new generation.",
        ],
    ]

    optParameters: list[list[Any]] = [
        [
            "control",
            None,
            None,
            "Path of a control socket (mode 0600) for `txflip upgrade` and"
            " `txflip status`.",
        ],
        [
            "log-format",
            None,
            "text",
            "text (with the PID) or json (one object a line, with pid, generation"
            " and upgrade_id: for journald and log shippers).",
            _logFormat,
        ],
        [
            "admin",
            None,
            None,
            "Serve /metrics, /livez and /readyz over HTTP on this endpoint"
            " description, e.g. tcp:9100:interface=127.0.0.1.",
        ],
        [
            "control-timeout",
            None,
            DEFAULT_REQUEST_TIMEOUT,
            "Seconds a control socket client has to send its request (and to read"
            " an error reply) before it is cut off.",
            _duration("control-timeout"),
        ],
        [
            "upgrade-timeout",
            None,
            DEFAULT_UPGRADE_TIMEOUT,
            "Seconds a new generation has to become ready before it is killed.",
            _duration("upgrade-timeout"),
        ],
        [
            "drain-timeout",
            None,
            DEFAULT_DRAIN_TIMEOUT,
            "Seconds an exiting generation waits for connections to finish.",
            _duration("drain-timeout"),
        ],
        [
            "idle-grace",
            None,
            DEFAULT_IDLE_GRACE,
            "Seconds an idle connection is kept while draining, to be closed with"
            " the reply to its next request.",
            _duration("idle-grace"),
        ],
    ]

    observerFactory: Callable[[], Any] | None = None

    def __setitem__(self, key: str, value: Any) -> None:
        # Only what the command line gives comes this way (usage.Options sets
        # the defaults with update()): that is what fixes a setting.
        self.__dict__.setdefault("_given", set()).add(key)
        super().__setitem__(key, value)

    def given(self) -> set[str]:
        """
        The options the command line gave (by option name), as opposed to those
        left at their defaults.
        """
        return set(self.__dict__.get("_given", ()))

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse as C{usage.Options} does, but answer a usage error with one line.

        twistd prints its whole usage (26 lines for flipecho; for C{flip}, every
        installed plugin) before the line that says what is wrong, and twist
        prints it after; the line is what a user needs, so it is all we print
        (with where the usage is).  C{SystemExit} is what twistd and twist let
        through: their runners catch C{UsageError} only.  A later generation
        also tells its parent why it could not start (L{failStartup}).
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            failStartup(f"{e} (see {self.commandName()} --help)")

    def commandName(self) -> str:
        """
        The command line that names these options, for a pointer to its C{--help}:
        the runner's name and each subcommand to here (C{twistd flip web}).
        """
        names: list[str] = []
        if self.subCommand is not None:
            names.append(self.subCommand)
        options: usage.Options = self
        while options.parent is not None:
            parent = options.parent
            names.insert(0, parent.subCommand or "")
            options = parent
        runner = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
        return " ".join(name for name in [runner or "twistd", *names] if name)

    def postOptions(self) -> None:
        own = self.get("pidfile")
        self["pidfile"] = os.path.abspath(own) if own else None
        runner = self.parent
        if runner is None:
            return
        if "fileLogObserverFactory" in runner:
            # twist: the PID on text lines (JSON is left as it is).
            if self["log-format"] == "json":
                runner["fileLogObserverFactory"] = jsonObserver
            elif runner["fileLogObserverFactory"] is textFileLogObserver:
                runner["fileLogObserverFactory"] = pidObserver
            return
        if "nodaemon" not in runner:
            return
        if own:
            raise usage.UsageError(
                "under twistd the pid file is twistd's: twistd --pidfile=PATH ..."
            )
        pidfile = runner.get("pidfile")
        if pidfile:
            self["pidfile"] = os.path.abspath(pidfile)
        runner["pidfile"] = ""
        nodaemon = bool(runner.get("nodaemon"))
        if _handoff.MARKER in os.environ:
            runner["nodaemon"] = True
        self.observerFactory = twistdObserverFactory(
            runner.get("logfile"),
            nodaemon,
            bool(runner.get("syslog")),
            runner.get("prefix") or "twisted",
            json=self["log-format"] == "json",
        )

    def settings(self) -> dict[str, object]:
        """
        The process-wide settings these options set, by C{flip:} setting name.
        """
        return {
            "pidfile": self["pidfile"],
            "upgradeTimeout": self["upgrade-timeout"],
            "drainTimeout": self["drain-timeout"],
            "idleGrace": self["idle-grace"],
            "move": not self["no-move"],
        }

    def defaulted(self) -> set[str]:
        """
        The settings of L{settings} left at their defaults (the pid file is
        always twistd's), which a C{flip:} description may still set.
        """
        options = {
            "upgradeTimeout": "upgrade-timeout",
            "drainTimeout": "drain-timeout",
            "idleGrace": "idle-grace",
            "move": "no-move",
        }
        given = self.given()
        return {name for name, option in options.items() if option not in given}


class _Root(MultiService):
    """
    The service twistd runs.  Added to the application, it makes the application's
    log observer ours, unless twistd was given one of its own (C{--logger}).
    """

    def __init__(self, observerFactory: Callable[[], Any] | None) -> None:
        super().__init__()
        self._observerFactory = observerFactory

    def setServiceParent(self, parent: Any) -> None:
        if (
            self._observerFactory is not None
            and isinstance(parent, Componentized)
            and parent.getComponent(ILogObserver) is None
        ):
            try:
                observer = self._observerFactory()
            except OSError as e:
                failStartup(f"cannot open log file {e.filename}: {e.strerror}")
            parent.setComponent(ILogObserver, observer)
        super().setServiceParent(parent)


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
    if options["log-format"] == "json":
        tagUpgrades(upgrader, upgrader.reactor)
    service = UpgradeService(
        upgrader,
        drainTimeout=options["drain-timeout"],
        idleGrace=options["idle-grace"],
        move=not options["no-move"],
    )
    try:
        if options.get("control"):
            service.listenControl(options["control"], options["control-timeout"])
        if options.get("admin"):
            service.listenAdmin(options["admin"])
    except TxflipError as e:
        upgrader.listeners.close(unlink=False)
        failStartup(str(e))
    return service


def rootService(options: UpgradeOptions, *services: IService) -> MultiService:
    """
    What a txflip plugin's C{makeService} returns: C{services} under a root that
    sets the log observer C{options} chose.
    """
    root = _Root(options.observerFactory)
    for service in services:
        service.setServiceParent(root)
    return root


# --- the flip meta-plugin: any twistd plugin, upgradable --------------------------


class Options(UpgradeOptions):
    """
    C{twistd [twistd options] flip [flip options] PLUGIN [plugin options]}: the
    plugins are subcommands, the way twistd's own C{ServerOptions} lists them.
    """

    synopsis = "[flip options]"  # the plugin's name and synopsis follow
    optParameters: list[list[Any]] = [
        ["pidfile", None, None, "Under twist: the pid file (twistd has its own)."]
    ]
    longdesc = (
        "Runs another plugin with zero-downtime upgrades (SIGHUP upgrades, SIGQUIT"
        " stops gracefully); its listeners must be flip: endpoints, e.g."
        " twistd -n flip web --listen flip:tcp:8080 --path ."
    )

    @property
    def subCommands(self) -> Iterator[tuple[str, None, Callable[[], Any], str]]:
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        self.loadedPlugins: dict[str, Any] = {}
        for plugin in sorted(getPlugins(IServiceMaker), key=attrgetter("tapname")):
            if plugin.tapname == "flip":
                continue
            self.loadedPlugins[plugin.tapname] = plugin

            # The plugin's module is imported only if it is the one asked for.
            def options(plugin: Any = plugin) -> Any:
                return plugin.options()

            yield (plugin.tapname, None, options, plugin.description)

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError(
                "which plugin should flip run? e.g. twistd -n flip web --listen"
                " flip:tcp:8080 --path ."
            )
        super().postOptions()


def makeService(options: Options) -> MultiService:
    service = makeUpgradeService(options)
    useService(
        service,
        options.settings(),
        "the flip plugin's options",
        defaulted=options.defaulted(),
    )
    assert options.subCommand is not None  # postOptions refused it otherwise
    plugin = options.loadedPlugins[options.subCommand]
    return rootService(options, service, plugin.makeService(options.subOptions))
