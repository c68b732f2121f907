"""
What a preloading process imports before the fork (L{txflip.run._template},
L{txflip.run._zygote}), and the guard that keeps the reactor out of it: the
reactor must not exist before the fork (one epoll set, one waker, shared by
every worker), so a finder refuses to import C{twisted.internet.reactor} while
we prepare, and records that it did (L{refused}).
"""

from __future__ import annotations

import os
import sys

REACTOR = "twisted.internet.reactor"
#: Preloaded when the runner itself cannot import the application here; each one
#: that would import the reactor is skipped.
WARM = (
    "twisted.internet.defer",
    "twisted.internet.protocol",
    "twisted.internet.endpoints",
    "twisted.internet.epollreactor",
    "twisted.internet.tcp",
    "twisted.application.service",
    "twisted.application.internet",
    "twisted.scripts.twistd",
    "twisted.web.server",
    "twisted.web.resource",
    "twisted.web.static",
    "twisted.web.wsgi",
    "twisted.web.script",  # with twcgi and demo: what twistd's web plugin imports
    "twisted.web.twcgi",  # but for the reactor (it is parsed in the worker)
    "twisted.web.demo",
    "twisted.spread.pb",  # with xml.dom.minidom: what twisted.web.tap's distrib
    "xml.dom.minidom",  # imports, but for the reactor
    "twisted.application.strports",
    "txflip",
    "txflip.twistd",
    "txflip.echo",
    "txflip.run._runners",
)
#: What every worker of C{txflip run} imports as it starts, whatever it runs,
#: and as it ends (moving its connections; a server imports them lazily).
WORKER_SIDE = (
    "txflip.run._channel",
    "txflip.run._balance",
    "txflip.move._in",
    "txflip.move._out",
    "txflip.move._transport",
    "txflip.control._metrics",
)


class ReactorImported(BaseException):
    """
    Something imported the reactor while we prepare: not an L{ImportError}, for
    no fallback to swallow; Twisted's plugin loader swallows all (and logs it,
    hence the message), so the guard records it too (L{refused}).
    """


#: One entry each time the guard refused the reactor while we prepared.
refused: list[str] = []


class Guard:
    """
    A C{sys.meta_path} finder that refuses the reactor's module.
    """

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name == REACTOR:
            refused.append(name)
            raise ReactorImported(
                "txflip run --preload: the reactor is not imported before the"
                " fork; this plugin is loaded in each worker instead"
            )


def warm() -> None:
    for name in WARM:
        try:
            __import__(name)
        except (ReactorImported, ImportError):
            pass


def warmPlugins() -> None:
    """
    Load every endpoint-parser plugin, as C{serverFromString} does in each
    worker for a prefix no built-in parser has (C{flip:}), and every twistd
    plugin, as twistd's option parsing does in each worker that parses them
    (C{flip web}'s: see L{warmNamed}): once here, shared.  Autobahn's parser,
    when installed, brings Autobahn, txaio and cffi, which parses C sources on
    import: tens of ms a worker; twistd's dozen plugin modules, about 5 ms.  One
    that would import the reactor, or fails, is left to the worker, which logs it
    as twistd would (here, C{getPlugins} would log it, and every worker would
    replay that log).
    """
    from twisted.application.service import IServiceMaker
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.plugin import getCache

    import twisted.plugins

    wanted = (IStreamServerEndpointStringParser, IServiceMaker)
    for dropin in getCache(twisted.plugins).values():
        for plugin in dropin.plugins:
            if any(interface in plugin.provided for interface in wanted):
                try:
                    plugin.load()
                except (ReactorImported, Exception):  # noqa: BLE001 - see above
                    pass


#: The options of twistd's C{web} plugin whose value is an object's dotted name,
#: imported as they are parsed (L{warmNamed}).
NAMING = ("--class", "--wsgi")


def namedIn(argv: list[str]) -> list[str]:
    """
    The dotted names that twistd's C{web} plugin is given in C{argv} (a twistd
    command line) by an option of L{NAMING}, after the word C{web}.
    """
    if "web" not in argv:
        return []
    after = argv[argv.index("web") + 1 :]
    names = []
    for arg, following in zip(after, [*after[1:], None], strict=True):
        option, equals, value = arg.partition("=")
        if option in NAMING:
            name = value if equals else following
            if name:
                names.append(name)
    return names


def warmNamed(argv: list[str]) -> None:
    """
    Import the application twistd's C{web} plugin names (C{--class},
    C{--wsgi}), here in the template, so that the workers share it.  That
    plugin's module imports the reactor, so each worker parses its options, and
    the parsing would import the application in each worker: a Django or Flask
    application each time, unshared.  One that fails, or imports the reactor, is
    left to the worker, which reports it as twistd does.
    """
    from twisted.python.reflect import namedAny

    for name in namedIn(argv):
        try:
            namedAny(name)
        except (ReactorImported, Exception):  # noqa: BLE001 - see above
            pass


def searchPath(kind: str, target: str) -> str:
    """
    Where the command would find its own modules first (C{sys.path[0]}).
    """
    script = kind != "module" and os.path.isfile(target)
    return os.path.dirname(os.path.realpath(target)) if script else os.getcwd()


def warmFor(kind: str, target: str) -> None:
    """
    Import what every worker of C{kind} imports before its application: the
    endpoint parsers (the command's own plugins too, once C{sys.path} is the
    command's) and txflip's worker side.
    """
    sys.path[0] = searchPath(kind, target)
    warmPlugins()
    for name in WORKER_SIDE:
        __import__(name)
