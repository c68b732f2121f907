"""
The C{flip:} server endpoint: graceful upgrades for any Twisted server by changing
one string, e.g. C{twistd -n web --listen flip:tcp:8080 --path .} or
C{serverFromString(reactor, "flip:unix:/run/app.sock")}.

The first C{flip:} endpoint of a process sets up the process-wide upgrader: SIGHUP
upgrades, SIGQUIT stops gracefully, the process is ready once the reactor runs, and
it exits by stopping the reactor after the drain.  Under twistd the pid file is
twistd's (see L{txflip.twistd.takeOverTwistd}); otherwise one may be named in the
description (C{flip:tcp:8080:pidfile=/run/app.pid}).  Other process-wide settings
the first endpoint may carry: C{upgradeTimeout}, C{drainTimeout}, C{idleGrace}.

The socket is bound (or inherited) when the description is parsed, so that an
address in use is reported at once, not when the reactor starts.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

from ._addresses import ListenSpec, parseListen
from ._errors import ListenError, TxflipError
from ._fds import Listener
from ._upgrader import Upgrader
from .service import UpgradeService

_log = Logger()
_SETTINGS = {"pidfile", "upgradeTimeout", "drainTimeout", "idleGrace"}


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def innerDescription(args: tuple[str, ...], kwargs: dict[str, str]) -> str:
    """
    Rebuild the wrapped description from what Twisted's parser split it into.
    """
    parts = [_quote(arg) for arg in args]
    parts += [f"{_quote(key)}={_quote(value)}" for key, value in kwargs.items()]
    return ":".join(parts)


class _FlipProcess:
    """
    The process-wide part: one upgrader and one service for every C{flip:} endpoint.
    """

    current: _FlipProcess | None = None

    def __init__(self, reactor: Any, settings: dict[str, str]) -> None:
        from .twistd import failStartup, takeOverTwistd

        self.underTwistd = False
        try:
            twistd = takeOverTwistd(os.environ)
            pidFile = settings.get("pidfile")
            command = None
            if twistd is not None:
                self.underTwistd = True
                pidFile = twistd[0].pidfile
                command = twistd[1]
            upgrader = Upgrader(
                reactor,
                pidFile=pidFile,
                upgradeTimeout=float(settings.get("upgradeTimeout", 60)),
                command=command,
            )
            self.service = UpgradeService(
                upgrader,
                reactor=reactor,
                drainTimeout=float(settings.get("drainTimeout", 30)),
                idleGrace=float(settings.get("idleGrace", 1)),
            )
        except (TxflipError, ValueError) as e:
            if self.underTwistd:
                failStartup(str(e))
            raise
        self.service.startService()
        reactor.addSystemEventTrigger("before", "shutdown", self.service.stopService)

    @classmethod
    def get(cls, reactor: Any, settings: dict[str, str]) -> _FlipProcess:
        if cls.current is None:
            cls.current = cls(reactor, settings)
        return cls.current


@implementer(IListeningPort)
class _SharedPort:
    """
    What C{listen} returns: stopping it only stops our accepting (idempotently:
    txflip and C{StreamServerEndpointService} may both stop it).
    """

    def __init__(self, listener: Listener) -> None:
        self._listener = listener

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred[None]:
        return self._listener.stopListening()

    def getHost(self) -> IAddress:
        assert self._listener.port is not None
        return self._listener.port.getHost()


@implementer(IStreamServerEndpoint)
class FlipServerEndpoint:
    """
    A server endpoint whose socket is handed over to the next generation.
    """

    def __init__(
        self,
        process: _FlipProcess,
        spec: ListenSpec,
        tlsContext: Any = None,
    ) -> None:
        self._process = process
        self._listener = process.service.upgrader.listen(spec)
        self._tlsContext = tlsContext

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        wrap = None
        if self._tlsContext is not None:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            context = self._tlsContext

            def wrap(tracker: IProtocolFactory) -> IProtocolFactory:
                return TLSMemoryBIOFactory(context, False, tracker)

        self._process.service.listen(self._listener, factory, wrap)
        return succeed(_SharedPort(self._listener))


def _innerSpec(reactor: Any, inner: str) -> tuple[ListenSpec, Any]:
    """
    The socket an inner description asks for, and its TLS context if it is C{ssl:}.
    """
    kind = inner.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "unix", "systemd"):
        return parseListen(inner), None
    if kind == "ssl":
        from twisted.internet.endpoints import serverFromString

        # Twisted builds the TLS context from the description's own arguments;
        # each generation rebuilds it, only the socket is inherited.
        endpoint = serverFromString(reactor, inner)
        interface = endpoint._interface or "0.0.0.0"
        family = "tcp6" if ":" in interface else "tcp"
        escaped = interface.replace(":", "\\:")
        spec = parseListen(
            f"{family}:{endpoint._port}:interface={escaped}:backlog={endpoint._backlog}"
        )
        return spec, endpoint._sslContextFactory
    raise ListenError(
        f"bad listen description 'flip:{inner}': flip: wraps tcp, tcp6, unix, ssl"
        " and systemd descriptions"
    )


def parseFlip(reactor: Any, *args: str, **kwargs: str) -> FlipServerEndpoint:
    settings = {key: kwargs.pop(key) for key in list(kwargs) if key in _SETTINGS}
    if not args:
        raise ListenError("bad listen description 'flip:': what should it wrap?")
    inner = innerDescription(args, kwargs)
    process = _FlipProcess.get(reactor, settings)
    try:
        spec, tls = _innerSpec(reactor, inner)
        return FlipServerEndpoint(process, spec, tls)
    except (TxflipError, ValueError) as e:
        if process.underTwistd:
            from .twistd import failStartup

            failStartup(str(e) if isinstance(e, TxflipError) else f"flip:{inner}: {e}")
        raise
