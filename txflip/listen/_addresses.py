"""
Listen descriptions: the strings users write (C{tcp:8080:interface=127.0.0.1}) and the
canonical keys generations use to recognise the same listener.

The syntax is Twisted's server endpoint syntax (colon-separated, backslash escapes,
positional then C{key=value} arguments) for the kinds txflip can hand over: C{tcp},
C{tcp6}, C{unix}, C{udp} and C{udp6}.  We parse it ourselves rather than through
C{serverFromString} because txflip must create and own every socket: an endpoint's
C{listenTCP} port would C{shutdown()} the socket the next generation shares.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Literal, NamedTuple, cast

from txflip._errors import ListenError

Kind = Literal["tcp", "tcp6", "unix", "udp", "udp6", "systemd"]
#: The kinds of socket a generation can bind and hand over (C{systemd:} names a
#: socket systemd passed, of one of these kinds).
KINDS: tuple[Kind, ...] = ("tcp", "tcp6", "unix", "udp", "udp6")

_FAMILIES: dict[str, socket.AddressFamily] = {
    "tcp": socket.AF_INET,
    "udp": socket.AF_INET,
    "tcp6": socket.AF_INET6,
    "udp6": socket.AF_INET6,
    "unix": socket.AF_UNIX,
}
_DEFAULT_INTERFACE = {"tcp": "0.0.0.0", "udp": "0.0.0.0", "tcp6": "::", "udp6": "::"}
_ALLOWED = {
    "tcp": ("port", {"interface", "backlog"}),
    "tcp6": ("port", {"interface", "backlog"}),
    "udp": ("port", {"interface"}),
    "udp6": ("port", {"interface"}),
    "unix": ("address", {"mode", "backlog", "lockfile"}),
}
DEFAULT_BACKLOG = 128


class ListenSpec(NamedTuple):
    """
    One listener as asked for: what kind of socket, bound where.

    C{port} may be 0 ("any free port"); the bound port is known only once bound, and
    L{ListenSpec.bound} makes the spec of what was actually bound.  A C{systemd}
    spec binds nothing: it names (C{alias}, e.g. C{name=web}) a socket systemd
    passed, which later generations inherit under the same name.
    """

    kind: Kind
    host: str = ""
    port: int = 0
    path: str = ""
    backlog: int = DEFAULT_BACKLOG
    mode: int = 0o666
    alias: str = ""

    @property
    def family(self) -> socket.AddressFamily:
        return _FAMILIES[self.kind]

    @property
    def socktype(self) -> socket.SocketKind:
        if self.kind.startswith("udp"):
            return socket.SOCK_DGRAM
        return socket.SOCK_STREAM

    @property
    def stream(self) -> bool:
        return self.socktype == socket.SOCK_STREAM

    @property
    def key(self) -> str:
        """
        The canonical name of this address, e.g. C{tcp:127.0.0.1:8080},
        C{tcp6:[::1]:8080}, C{unix:/run/app.sock}: two specs with the same key
        describe the same socket.
        """
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "systemd":
            return f"systemd:{self.alias}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind}:{host}:{self.port}"

    def __str__(self) -> str:
        return self.key

    def bindAddress(self) -> str | tuple[str, int]:
        if self.kind == "unix":
            return self.path
        return (self.host, self.port)

    def bound(self, sockname: object) -> ListenSpec:
        """
        The spec of the socket actually bound: the real port where 0 was asked for.
        """
        if self.kind == "unix" or not isinstance(sockname, tuple):
            return self
        return ListenSpec(
            self.kind, self.host, int(sockname[1]), "", self.backlog, self.mode
        )


def _split(description: str) -> list[tuple[str | None, str]]:
    """
    Split on colons not escaped with a backslash, as Twisted's endpoint parser
    does, and each part on its first unescaped C{=}: C{(name, value)}, or
    C{(None, value)} for a positional part.
    """
    parts: list[tuple[str | None, str]] = []
    name: str | None = None
    current: list[str] = []
    chars = iter(description)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, "\\"))
        elif ch == "=" and name is None:
            name, current = "".join(current), []
        elif ch == ":":
            parts.append((name, "".join(current)))
            name, current = None, []
        else:
            current.append(ch)
    parts.append((name, "".join(current)))
    return parts


def _int(description: str, name: str, value: str, low: int, high: int) -> int:
    try:
        # Twisted reads a Unix socket's mode as octal (mode=0666).
        number = int(value.removeprefix("0o"), 8) if name == "mode" else int(value)
    except ValueError:
        number = -1
    if not low <= number <= high:
        raise ListenError(
            f"bad listen description {description!r}: {name}={value!r} is not a"
            f" number from {low} to {high}"
        )
    return number


def parseListen(description: str, cwd: str | None = None) -> ListenSpec:
    """
    Parse one listen description.

    @param cwd: the directory relative Unix paths are resolved against; every
        generation resolves them against the first generation's directory, so that
        they name the same socket.
    @raise ListenError: with a one-line reason when the description is not usable.
    """
    (_, kind), *rest = _split(description.strip())
    if kind == "systemd":
        return ListenSpec("systemd", alias=_systemdAlias(description, dict(rest)))
    if kind not in _ALLOWED:
        raise ListenError(
            f"bad listen description {description!r}: unknown kind {kind!r}"
            " (txflip can hand over tcp, tcp6, unix, udp and udp6, and use systemd's)"
        )
    positionalName, keywords = _ALLOWED[kind]
    args: dict[str, str] = {}
    positional = [positionalName]
    for name, value in rest:
        if name is None:
            if not positional:
                if "interface" in args:
                    # interface=::1: the colons of the address split it.
                    raise ListenError(
                        f"bad listen description {description!r}: escape the colons"
                        r" of an IPv6 interface (interface=\:\:1), and quote the"
                        r" escaped form for the shell: --listen"
                        f" '{kind}:PORT:interface=\\:\\:1'"
                    )
                raise ListenError(
                    f"bad listen description {description!r}: unexpected {value!r}"
                )
            name = positional.pop()
        elif name == positionalName:
            positional = []
        elif name not in keywords:
            raise ListenError(
                f"bad listen description {description!r}: unknown option {name!r}"
                f" for {kind} (allowed: {', '.join(sorted(keywords))})"
            )
        args[name] = value
    if positionalName not in args or not args[positionalName]:
        raise ListenError(
            f"bad listen description {description!r}: missing the {positionalName}"
        )
    backlog = DEFAULT_BACKLOG
    if "backlog" in args:
        backlog = _int(description, "backlog", args["backlog"], 1, 65535)
    if kind == "unix":
        mode = _int(description, "mode", args.get("mode", "0o666"), 0, 0o777)
        path = os.path.join(cwd or os.getcwd(), args["address"])
        return ListenSpec(
            "unix", path=os.path.normpath(path), backlog=backlog, mode=mode
        )
    port = _int(description, "port", args["port"], 0, 65535)
    host = args.get("interface") or _DEFAULT_INTERFACE[kind]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    want = 6 if kind.endswith("6") else 4
    if address is None or address.version != want:
        raise ListenError(
            f"bad listen description {description!r}: interface {host!r} is not an"
            f" IPv{want} address"
        )
    return ListenSpec(
        cast(Kind, kind), host=address.compressed, port=port, backlog=backlog
    )


def _systemdAlias(description: str, args: dict[str | None, str]) -> str:
    """
    The alias a C{systemd:} description (Twisted's syntax: C{systemd:domain=INET:
    index=0} or C{systemd:domain=INET:name=web}) asks for: C{index=0} or
    C{name=web}.

    @raise ListenError: neither an index nor a name.
    """
    if args.get("name"):
        return f"name={args['name']}"
    index = args.get("index", "")
    if not index.isdigit():
        raise ListenError(
            f"bad listen description {description!r}: give index=N or name=NAME"
        )
    return f"index={int(index)}"
