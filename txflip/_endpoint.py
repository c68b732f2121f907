"""
The C{flip:} server endpoint: graceful upgrades for any Twisted server by changing
one string, e.g. C{twist web --listen flip:tcp:8080 --path .},
C{twistd -n flip web --listen flip:tcp:8080 --path .} or
C{serverFromString(reactor, "flip:unix:/run/app.sock")}.

One upgrader serves every C{flip:} endpoint of a process: SIGHUP upgrades, SIGQUIT
stops gracefully, the process is ready once the reactor runs, and it exits by
stopping the reactor after the drain.  Under twistd, the C{flip} plugin sets it up
from twistd's options (the pid file is twistd's); otherwise the first endpoint
does, from its settings: C{pidfile}, C{upgradeTimeout}, C{drainTimeout},
C{idleGrace} (C{flip:tcp:8080:pidfile=/run/app.pid}), C{move=no} (drain every
connection instead of moving keep-alive ones to the next generation).

The socket is bound (or inherited) when the description is parsed, so that an
address in use is reported at once, not when the reactor starts.
"""

from __future__ import annotations

import os
import sys
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

from txflip._errors import ListenError, TxflipError
from txflip._settings import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_IDLE_GRACE,
    DEFAULT_UPGRADE_TIMEOUT,
    SettingError,
    seconds,
)
from txflip.generation._machine import Upgrader
from txflip.generation._process import failStartup
from txflip.listen._addresses import ListenSpec, parseListen
from txflip.listen._fds import Listener
from txflip.service import UpgradeService

_log = Logger()
_SETTINGS = {"pidfile", "upgradeTimeout", "drainTimeout", "idleGrace", "move"}


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

    Under twistd the C{flip} plugin makes the service from its options (see
    L{txflip.twistd}) before the plugin it runs parses its descriptions; otherwise
    the first C{flip:} endpoint makes it from its settings, starts it, and stops it
    before the reactor shuts down.  Either way the settings are then fixed: a later
    endpoint may repeat them, not change them.
    """

    current: _FlipProcess | None = None

    def __init__(
        self,
        service: UpgradeService,
        fixed: dict[str, object],
        source: str,
        defaulted: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        self.service = service
        self.fixed = fixed
        self.source = source
        self.underTwistd = source != FIRST
        #: Who fixed each setting; those left at their default (C{defaulted})
        #: are fixed by the first description that sets them, if it can.
        self.sources = {name: source for name in fixed if name not in defaulted}

    @classmethod
    def get(cls, reactor: Any, settings: dict[str, str], inner: str) -> _FlipProcess:
        process = cls.current
        if process is None:
            if "twisted.scripts.twistd" in sys.modules:
                failStartup(
                    f"flip:{inner} under twistd needs the flip plugin in front of"
                    " yours: twistd [options] flip PLUGIN [plugin options]"
                )
            fixed = _checked(settings, _DEFAULTS, inner)
            upgrader = Upgrader(
                reactor,
                pidFile=fixed["pidfile"],  # type: ignore[arg-type]
                upgradeTimeout=fixed["upgradeTimeout"],  # type: ignore[arg-type]
            )
            service = UpgradeService(
                upgrader,
                reactor=reactor,
                drainTimeout=fixed["drainTimeout"],  # type: ignore[arg-type]
                idleGrace=fixed["idleGrace"],  # type: ignore[arg-type]
                move=fixed["move"],  # type: ignore[arg-type]
            )
            service.startService()
            reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
            process = cls.current = cls(service, fixed, FIRST)
            return process
        given = _checked(settings, {}, inner)
        for name, value in given.items():
            if value == process.fixed[name]:
                continue
            source = process.sources.get(name)
            if source is not None:
                raise SettingError(
                    f"flip:{inner}: {name}={settings[name]} conflicts with"
                    f" {name}={process.fixed[name]}, fixed by {source}"
                )
            if name not in _LATE:
                raise SettingError(
                    f"flip:{inner}: {name}={settings[name]} can only be set by"
                    f" {process.source} (the upgrader exists before this"
                    " description is parsed)"
                )
        for name, value in given.items():
            if value != process.fixed[name]:
                setattr(process.service, _LATE[name], value)
                process.fixed[name] = value
                process.sources[name] = f"flip:{inner}"
        return process


#: The settings a description may still set when the twistd plugin left them at
#: their defaults: the service's attributes, read when it drains.
_LATE = {"drainTimeout": "drainTimeout", "idleGrace": "idleGrace"}


FIRST = "the first flip: endpoint of this process"
_DEFAULTS: dict[str, object] = {
    "pidfile": None,
    "upgradeTimeout": DEFAULT_UPGRADE_TIMEOUT,
    "drainTimeout": DEFAULT_DRAIN_TIMEOUT,
    "idleGrace": DEFAULT_IDLE_GRACE,
    "move": True,
}


def _checked(
    settings: dict[str, str], defaults: dict[str, object], inner: str
) -> dict[str, object]:
    """
    C{settings} checked (durations by L{seconds}, the pid file made absolute),
    over C{defaults}.
    """
    result = dict(defaults)
    for name, text in settings.items():
        if name == "pidfile":
            result[name] = os.path.abspath(text) if text else None
        elif name == "move":
            if text not in ("yes", "no"):
                raise SettingError(
                    f"flip:{inner}: move must be yes or no, not {text!r}"
                )
            result[name] = text == "yes"
        else:
            try:
                result[name] = seconds(name, text)
            except SettingError as e:
                raise SettingError(f"flip:{inner}: {e}") from None
    return result


def useService(
    service: UpgradeService,
    fixed: dict[str, object],
    source: str,
    defaulted: set[str] | frozenset[str] = frozenset(),
) -> None:
    """
    Make C{service} the one every C{flip:} endpoint of this process serves on
    (the C{flip} twistd plugin's), with C{fixed} settings that C{source} set;
    those named in C{defaulted} were not given, and a description may still set
    them if they can change after the service is made.
    """
    _FlipProcess.current = _FlipProcess(service, fixed, source, defaulted)


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
        return _sslSpec(reactor, inner)
    raise ListenError(
        f"bad listen description 'flip:{inner}': flip: wraps tcp, tcp6, unix, ssl"
        " and systemd descriptions"
    )


class _ListenSSLArguments:
    """
    A reactor for C{SSL4ServerEndpoint.listen} that only keeps what it asks for
    (C{IReactorSSL.listenSSL}'s arguments): the public way to learn the port,
    interface, backlog and TLS context Twisted makes of an C{ssl:} description.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.arguments: tuple[int, Any, int, str] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenSSL(
        self,
        port: int,
        factory: IProtocolFactory,
        contextFactory: Any,
        backlog: int = 50,
        interface: str = "",
    ) -> None:
        self.arguments = (port, contextFactory, backlog, interface)


def _sslSpec(reactor: Any, inner: str) -> tuple[ListenSpec, Any]:
    """
    The socket and TLS context an C{ssl:} description asks for.  Each generation
    builds its context from the description's own arguments; only the socket is
    inherited.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory

    try:
        import OpenSSL  # noqa: F401
    except ImportError:
        raise ListenError(
            f"flip:{inner}: TLS needs pyOpenSSL: pip install 'twisted[tls]'"
        ) from None
    capture = _ListenSSLArguments(reactor)
    serverFromString(capture, inner).listen(Factory())
    assert capture.arguments is not None, "SSL4ServerEndpoint did not listenSSL"
    port, context, backlog, interface = capture.arguments
    interface = interface or "0.0.0.0"
    family = "tcp6" if ":" in interface else "tcp"
    escaped = interface.replace(":", "\\:")
    spec = parseListen(f"{family}:{port}:interface={escaped}:backlog={backlog}")
    return spec, context


def parseFlip(reactor: Any, *args: str, **kwargs: str) -> FlipServerEndpoint:
    settings = {key: kwargs.pop(key) for key in list(kwargs) if key in _SETTINGS}
    inner = innerDescription(args, kwargs)
    try:
        if not args:
            raise ListenError(
                "bad listen description 'flip': what should it wrap? e.g."
                " flip:tcp:8080:interface=127.0.0.1"
            )
        process = _FlipProcess.get(reactor, settings, inner)
        spec, tls = _innerSpec(reactor, inner)
        return FlipServerEndpoint(process, spec, tls)
    except (TxflipError, ValueError) as e:
        current = _FlipProcess.current
        underTwistd = (
            current.underTwistd
            if current is not None
            else "twisted.scripts.twistd" in sys.modules
        )
        if underTwistd:
            failStartup(str(e) if isinstance(e, TxflipError) else f"flip:{inner}: {e}")
        raise
