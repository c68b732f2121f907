"""
Unit tests for txflip.listen._addresses: listen descriptions and their canonical keys.
"""

from __future__ import annotations

import os
import socket

import pytest

from tests.harness import oneLine
from txflip._errors import ListenError
from txflip.listen._addresses import DEFAULT_BACKLOG, ListenSpec, parseListen


def refused(description: str, *fragments: str, cwd: str | None = None) -> str:
    """
    Parse C{description}, expecting a one-line L{ListenError} naming it and
    containing every fragment.
    """
    with pytest.raises(ListenError) as info:
        parseListen(description, cwd)
    prefix = f"bad listen description {description!r}"
    return oneLine(str(info.value), prefix, *fragments)


# --- every kind -------------------------------------------------------------


def test_tcpDefaults() -> None:
    spec = parseListen("tcp:8080")
    assert spec == ListenSpec("tcp", host="0.0.0.0", port=8080)
    assert spec.family == socket.AF_INET
    assert spec.socktype == socket.SOCK_STREAM
    assert spec.stream
    assert spec.backlog == DEFAULT_BACKLOG
    assert spec.key == "tcp:0.0.0.0:8080"
    assert str(spec) == spec.key
    assert spec.bindAddress() == ("0.0.0.0", 8080)


def test_tcpInterfaceAndBacklog() -> None:
    spec = parseListen("tcp:8080:interface=127.0.0.1:backlog=5")
    assert (spec.kind, spec.host, spec.port, spec.backlog) == (
        "tcp",
        "127.0.0.1",
        8080,
        5,
    )
    assert spec.key == "tcp:127.0.0.1:8080"


def test_tcpPortZero() -> None:
    spec = parseListen("tcp:0:interface=127.0.0.1")
    assert spec.port == 0
    assert spec.key == "tcp:127.0.0.1:0"


def test_tcpPortAsKeyword() -> None:
    assert parseListen("tcp:port=81:interface=127.0.0.1") == parseListen(
        "tcp:81:interface=127.0.0.1"
    )


def test_keywordsBeforePositional() -> None:
    assert parseListen("tcp:interface=127.0.0.1:81") == parseListen(
        "tcp:81:interface=127.0.0.1"
    )


def test_tcp6Defaults() -> None:
    spec = parseListen("tcp6:8080")
    assert spec == ListenSpec("tcp6", host="::", port=8080)
    assert spec.family == socket.AF_INET6
    assert spec.socktype == socket.SOCK_STREAM
    assert spec.key == "tcp6:[::]:8080"


def test_tcp6EscapedInterface() -> None:
    spec = parseListen(r"tcp6:8080:interface=\:\:1")
    assert spec.host == "::1"
    assert spec.port == 8080
    assert spec.key == "tcp6:[::1]:8080"
    assert spec.bindAddress() == ("::1", 8080)


def test_tcp6InterfaceIsCompressed() -> None:
    """
    Two spellings of one IPv6 address give the same key.
    """
    long = parseListen(r"tcp6:80:interface=0\:0\:0\:0\:0\:0\:0\:1")
    short = parseListen(r"tcp6:80:interface=\:\:1")
    assert long.key == short.key == "tcp6:[::1]:80"


def test_udpDefaults() -> None:
    spec = parseListen("udp:5353")
    assert spec == ListenSpec("udp", host="0.0.0.0", port=5353)
    assert spec.family == socket.AF_INET
    assert spec.socktype == socket.SOCK_DGRAM
    assert not spec.stream
    assert spec.key == "udp:0.0.0.0:5353"


def test_udpInterface() -> None:
    assert parseListen("udp:53:interface=127.0.0.1").key == "udp:127.0.0.1:53"


def test_udp6() -> None:
    spec = parseListen(r"udp6:53:interface=\:\:1")
    assert spec.kind == "udp6"
    assert spec.family == socket.AF_INET6
    assert spec.socktype == socket.SOCK_DGRAM
    assert spec.key == "udp6:[::1]:53"
    assert parseListen("udp6:53").host == "::"


def test_unixAbsolute() -> None:
    spec = parseListen("unix:/run/app.sock")
    assert spec == ListenSpec("unix", path="/run/app.sock", mode=0o666)
    assert spec.family == socket.AF_UNIX
    assert spec.socktype == socket.SOCK_STREAM
    assert spec.key == "unix:/run/app.sock"
    assert spec.bindAddress() == "/run/app.sock"
    assert spec.port == 0
    assert spec.backlog == DEFAULT_BACKLOG


def test_unixRelativeUsesCwd() -> None:
    spec = parseListen("unix:sub/../app.sock", cwd="/srv/app")
    assert spec.path == "/srv/app/app.sock"


def test_unixRelativeDefaultsToProcessCwd(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(str(tmp_path))
    assert parseListen("unix:a.sock").path == os.path.join(str(tmp_path), "a.sock")


def test_unixAddressKeyword() -> None:
    assert parseListen("unix:address=/x.sock").path == "/x.sock"


def test_unixOptions() -> None:
    spec = parseListen("unix:/x.sock:mode=0o600:backlog=7:lockfile=1")
    assert (spec.mode, spec.backlog) == (0o600, 7)


def test_unixEscapedColonInPath() -> None:
    assert parseListen(r"unix:/tmp/a\:b.sock").path == "/tmp/a:b.sock"


def test_surroundingWhitespaceIgnored() -> None:
    assert parseListen("  tcp:80 \n").port == 80


def test_boundGivesRealPort() -> None:
    spec = parseListen("tcp:0:interface=127.0.0.1:backlog=9")
    bound = spec.bound(("127.0.0.1", 41234))
    assert bound.port == 41234
    assert bound.backlog == 9
    assert bound.key == "tcp:127.0.0.1:41234"
    six = parseListen(r"tcp6:0:interface=\:\:1").bound(("::1", 5000, 0, 0))
    assert six.port == 5000


def test_boundUnixIsUnchanged() -> None:
    spec = parseListen("unix:/x.sock")
    assert spec.bound("/x.sock") is spec


def test_portLimits() -> None:
    assert parseListen("tcp:65535").port == 65535
    assert parseListen("udp:0").port == 0


# --- bad input --------------------------------------------------------------


@pytest.mark.parametrize("description", ["ssl:443", "TCPX:1", "", "stdio"])
def test_unknownKind(description: str) -> None:
    refused(description, "unknown kind", "tcp, tcp6, unix, udp and udp6")


@pytest.mark.parametrize("port", ["abc", "-1", "65536", "99999999", "8o", "0x50"])
def test_badPort(port: str) -> None:
    refused(f"tcp:{port}", "port=", "is not a number from 0 to 65535")


@pytest.mark.parametrize("description", ["tcp", "tcp:", "tcp:interface=127.0.0.1"])
def test_missingPort(description: str) -> None:
    refused(description, "missing the port")


@pytest.mark.parametrize("description", ["unix", "unix:", "unix:mode=0o600"])
def test_missingUnixAddress(description: str) -> None:
    refused(description, "missing the address")


@pytest.mark.parametrize(
    "description, fragment",
    [
        ("tcp:80:interface=localhost", "'localhost' is not an IPv4 address"),
        (r"tcp:80:interface=\:\:1", "'::1' is not an IPv4 address"),
        ("tcp:80:interface=300.1.1.1", "is not an IPv4 address"),
        (r"tcp6:80:interface=127.0.0.1", "'127.0.0.1' is not an IPv6 address"),
        ("udp:80:interface=example.com", "is not an IPv4 address"),
        ("udp6:80:interface=1.2.3.4", "is not an IPv6 address"),
    ],
)
def test_badInterface(description: str, fragment: str) -> None:
    refused(description, fragment)


@pytest.mark.parametrize(
    "description, fragment",
    [
        ("tcp:80:mode=0o600", "unknown option 'mode' for tcp"),
        (
            "tcp:80:foo=bar",
            "unknown option 'foo' for tcp (allowed: backlog, interface)",
        ),
        ("udp:80:backlog=5", "unknown option 'backlog' for udp (allowed: interface)"),
        ("unix:/x:interface=1.2.3.4", "unknown option 'interface' for unix"),
        ("tcp6:80:path=/x", "unknown option 'path' for tcp6"),
    ],
)
def test_unknownOption(description: str, fragment: str) -> None:
    refused(description, fragment)


def test_extraPositional() -> None:
    refused("tcp:80:81", "unexpected '81'")


def test_positionalAfterPortKeyword() -> None:
    refused("tcp:port=80:81", "unexpected '81'")


@pytest.mark.parametrize("backlog", ["0", "-5", "65536", "lots"])
def test_badBacklog(backlog: str) -> None:
    refused(f"tcp:80:backlog={backlog}", "backlog=", "from 1 to 65535")


@pytest.mark.parametrize("mode", ["0o1000", "-1", "rw"])
def test_badMode(mode: str) -> None:
    refused(f"unix:/x.sock:mode={mode}", "mode=")


def test_messageIsOneLineEvenWithNewlines() -> None:
    """
    A description with an embedded newline is reported quoted, on one line.
    """
    message = refused("tcp:80:interface=1.2.3.4\nX", "not an IPv4 address")
    assert "\\n" in message


# --- bugs -------------------------------------------------------------------


@pytest.mark.parametrize("mode, expected", [("0666", 0o666), ("600", 0o600)])
def test_modeIsOctalAsInTwisted(mode: str, expected: int) -> None:
    assert parseListen(f"unix:/x.sock:mode={mode}").mode == expected


def test_escapedEqualsInPath() -> None:
    assert parseListen(r"unix:/tmp/a\=b.sock").path == "/tmp/a=b.sock"
