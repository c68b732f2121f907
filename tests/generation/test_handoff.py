"""
Unit tests for txflip.generation._handoff: the fd table between generations.

Real sockets and pipes are placed at high fd numbers (50 and up, never allocated
by the lowest-free rule while the test runs), and the table names them.
"""

from __future__ import annotations

import gc
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError

from tests.harness import isOpen
from txflip._errors import HandoffError
from txflip._reactor import asReactor
from txflip.generation._handoff import (
    MARKER,
    Handoff,
    ParentWatcher,
    decode,
    encode,
    fromEnvironment,
    plan,
    tellParentReady,
)
from txflip.generation._process import SUMMARY_WIDTH, summarize
from txflip.listen._addresses import ListenSpec
from txflip.listen._fds import Listener

FIRST_HIGH_FD = 50


def described(bound: ListenSpec, requested: ListenSpec) -> Listener:
    """
    A listener as the table describes it (its socket is never bound: encode()
    only writes down what the listener says).
    """
    return Listener(bound, requested, socket.socket(bound.family, bound.socktype))


def describedAll(pairs: list[tuple[ListenSpec, ListenSpec]]) -> list[Listener]:
    listeners = [described(bound, requested) for bound, requested in pairs]
    for each in listeners:
        each.sock.close()  # encode() reads no fd
    return listeners


class FDs:
    """
    Places descriptors at free high fd numbers and closes whatever is left of
    them at the end of the test.
    """

    def __init__(self) -> None:
        self.placed: list[int] = []

    def free(self) -> int:
        """
        A free fd number (closed), reserved for this test.
        """
        fd = max([FIRST_HIGH_FD - 1, *self.placed]) + 1
        while isOpen(fd):
            fd += 1
        self.placed.append(fd)
        return fd

    def place(self, thing: int | socket.socket) -> int:
        """
        Duplicate C{thing} onto a free high fd and close the original.
        """
        fd = self.free()
        original = thing if isinstance(thing, int) else thing.detach()
        os.dup2(original, fd, inheritable=False)
        os.close(original)
        return fd

    def pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        return self.place(r), self.place(w)

    def listening(
        self, family: socket.AddressFamily, address: Any, backlog: int = 5
    ) -> int:
        sock = socket.socket(family, socket.SOCK_STREAM)
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        return self.place(sock)

    def udp(self, family: socket.AddressFamily, address: Any) -> int:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind(address)
        return self.place(sock)

    def closeAll(self) -> None:
        for fd in self.placed:
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def fds() -> Iterator[FDs]:
    placed = FDs()
    yield placed
    gc.collect()
    placed.closeAll()


def portOf(fd: int) -> int:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


def table(ready: int, parent: int, listeners: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "version": 1,
        "generation": 2,
        "ready": ready,
        "parent": parent,
        "listeners": listeners,
    }


def entry(
    fd: int,
    kind: str = "tcp",
    host: str = "127.0.0.1",
    port: int = 1,
    path: str = "",
    requestedPort: int | None = None,
) -> dict[str, Any]:
    return {
        "fd": fd,
        "kind": kind,
        "host": host,
        "port": port,
        "path": path,
        "requestedPort": port if requestedPort is None else requestedPort,
    }


def refused(value: str | dict[str, Any], *fragments: str) -> str:
    if not isinstance(value, str):
        value = json.dumps(value)
    with pytest.raises(HandoffError) as info:
        decode(value)
    message = str(info.value)
    assert message and len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, message
    # Any socket object created on the way must have been detached, not left to
    # close an fd when collected.
    gc.collect()
    return message


def accepts(fd: int, family: socket.AddressFamily) -> None:
    """
    The listening socket at C{fd} still accepts connections.
    """
    listener = socket.socket(fileno=os.dup(fd))
    client = socket.socket(family, socket.SOCK_STREAM)
    try:
        client.settimeout(5)
        client.connect(listener.getsockname())
        listener.settimeout(5)
        conn, _ = listener.accept()
        conn.close()
    finally:
        client.close()
        listener.close()


# --- encode / decode round trip -----------------------------------------------


def test_encodeLayout() -> None:
    tcp = ListenSpec("tcp", host="127.0.0.1", port=8080)
    zero = ListenSpec("tcp", host="127.0.0.1", port=0)
    bound = ListenSpec("tcp", host="127.0.0.1", port=40000)
    unix = ListenSpec("unix", path="/run/x.sock")
    value = encode(7, describedAll([(tcp, tcp), (bound, zero), (unix, unix)]))
    assert " " not in value
    wire = json.loads(value)
    assert wire.pop("parentPid") == os.getpid()
    assert [each.pop("aliases") for each in wire["listeners"]] == [[], [], []]
    assert wire == {
        "version": 1,
        "generation": 7,
        "ready": 3,
        "parent": 4,
        "listeners": [
            entry(5, "tcp", "127.0.0.1", 8080),
            entry(6, "tcp", "127.0.0.1", 40000, requestedPort=0),
            entry(7, "unix", "", 0, path="/run/x.sock"),
        ],
    }


def test_roundTrip(fds: FDs, tmp_path: Path) -> None:
    """
    encode() for real listening sockets, with the fd numbers rewritten to where
    the sockets are in this process, decodes to the same listeners, owning the
    fds.
    """
    _readyR, readyW = fds.pipe()
    parentR, _parentW = fds.pipe()
    tcpFD = fds.listening(socket.AF_INET, ("127.0.0.1", 0))
    tcp6FD = fds.listening(socket.AF_INET6, ("::1", 0))
    path = str(tmp_path / "s.sock")
    unixFD = fds.listening(socket.AF_UNIX, path)
    udpFD = fds.udp(socket.AF_INET, ("127.0.0.1", 0))
    tcpPort, tcp6Port, udpPort = portOf(tcpFD), portOf(tcp6FD), portOf(udpFD)

    tcp = ListenSpec("tcp", host="127.0.0.1", port=tcpPort)
    tcp6 = ListenSpec("tcp6", host="::1", port=tcp6Port)
    unix = ListenSpec("unix", path=path)
    udp = ListenSpec("udp", host="127.0.0.1", port=udpPort)
    pairs = [
        (tcp, ListenSpec("tcp", host="127.0.0.1", port=0)),
        (tcp6, tcp6),
        (unix, unix),
        (udp, ListenSpec("udp", host="127.0.0.1", port=0)),
    ]
    wire = json.loads(encode(3, describedAll(pairs)))
    wire["ready"], wire["parent"] = readyW, parentR
    for each, fd in zip(wire["listeners"], [tcpFD, tcp6FD, unixFD, udpFD], strict=True):
        each["fd"] = fd

    handoff = decode(json.dumps(wire))
    try:
        assert isinstance(handoff, Handoff)
        assert (handoff.generation, handoff.readyFD, handoff.parentFD) == (
            3,
            readyW,
            parentR,
        )
        assert [each.spec for each in handoff.listeners] == [tcp, tcp6, unix, udp]
        assert [each.requested for each in handoff.listeners] == [
            pair[1] for pair in pairs
        ]
        assert [each.sock.fileno() for each in handoff.listeners] == [
            tcpFD,
            tcp6FD,
            unixFD,
            udpFD,
        ]
        for each in handoff.listeners:
            assert each.sock.family == each.spec.family
            assert each.sock.type == each.spec.socktype
            assert not each.sock.getblocking()
        accepts(tcpFD, socket.AF_INET)
        accepts(tcp6FD, socket.AF_INET6)
        accepts(unixFD, socket.AF_UNIX)
    finally:
        for each in handoff.listeners:
            each.sock.close()
    assert not isOpen(tcpFD)


def test_noListeners(fds: FDs) -> None:
    _readyR, readyW = fds.pipe()
    parentR, _parentW = fds.pipe()
    handoff = decode(json.dumps(table(readyW, parentR, [])))
    assert handoff.listeners == []
    assert (handoff.readyFD, handoff.parentFD) == (readyW, parentR)


def test_tellParentReady(fds: FDs) -> None:
    readyR, readyW = fds.pipe()
    tellParentReady(Handoff(2, readyW, -1))
    assert os.read(readyR, 100) == b"ready\n"
    assert not isOpen(readyW)
    assert os.read(readyR, 100) == b""


def test_tellParentReadyParentGone(fds: FDs) -> None:
    """
    A parent that closed its end is not an error; our end is closed anyway.
    """
    readyR, readyW = fds.pipe()
    os.close(readyR)
    tellParentReady(Handoff(2, readyW, -1))
    assert not isOpen(readyW)


# --- fromEnvironment ------------------------------------------------------------


def test_fromEnvironmentFirstGeneration() -> None:
    environ = {"PATH": "/bin"}
    assert fromEnvironment(environ) is None
    assert environ == {"PATH": "/bin"}


def test_fromEnvironmentRemovesMarker(fds: FDs) -> None:
    _readyR, readyW = fds.pipe()
    parentR, _parentW = fds.pipe()
    environ = {"PATH": "/bin", MARKER: json.dumps(table(readyW, parentR, []))}
    handoff = fromEnvironment(environ)
    assert handoff is not None and handoff.parentFD == parentR
    assert environ == {"PATH": "/bin"}


def test_fromEnvironmentRemovesBadMarker() -> None:
    environ = {MARKER: "garbage"}
    with pytest.raises(HandoffError):
        fromEnvironment(environ)
    assert environ == {}


# --- validation: the table itself -----------------------------------------------


@pytest.mark.parametrize("value", ["", "nope", "{", "{'version': 1}", "\x00"])
def test_notJSON(value: str) -> None:
    refused(value, "malformed handoff table: not JSON")


@pytest.mark.parametrize("value", ["[]", "1", "null", '"x"', "true", "[{}]"])
def test_notObject(value: str) -> None:
    refused(value, "malformed handoff table: not a JSON object")


@pytest.mark.parametrize("version", [0, 2, -1, 10**30])
def test_wrongVersion(version: int) -> None:
    message = refused(
        {"version": version}, f"handoff table version {version} is not supported"
    )
    assert "expected 1" in message


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("version", None, "table has no 'version'"),
        ("version", "1", "table 'version' is not a int"),
        ("version", 1.0, "table 'version' is not a int"),
        ("version", True, "table 'version' is not a int"),
        ("generation", None, "table has no 'generation'"),
        ("generation", "2", "table 'generation' is not a int"),
        ("ready", None, "table has no 'ready'"),
        ("ready", [3], "table 'ready' is not a int"),
        ("parent", None, "table has no 'parent'"),
        ("parent", False, "table 'parent' is not a int"),
        ("listeners", None, "table has no 'listeners'"),
        ("listeners", {}, "table 'listeners' is not a list"),
        ("listeners", "[]", "table 'listeners' is not a list"),
    ],
)
def test_tableFields(name: str, value: object, fragment: str) -> None:
    wire = table(60, 61, [])
    if value is None:
        del wire[name]
    else:
        wire[name] = value
    refused(wire, "malformed handoff table", fragment)


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("1", "table 'parentPid' is not a int"),
        (True, "table 'parentPid' is not a int"),
        (0, "bad parentPid"),
        (-7, "bad parentPid"),
    ],
)
def test_badParentPID(value: object, fragment: str) -> None:
    wire = table(60, 61, [])
    wire["parentPid"] = value
    refused(wire, "malformed handoff table", fragment)


def test_parentPID(fds: FDs) -> None:
    _readyR, readyW = fds.pipe()
    parentR, _parentW = fds.pipe()
    wire = table(readyW, parentR, [])
    assert decode(json.dumps(wire)).parentPID is None
    wire["parentPid"] = 12345
    assert decode(json.dumps(wire)).parentPID == 12345


@pytest.mark.parametrize(
    "generation, ready, parent",
    [(1, 60, 61), (0, 60, 61), (-3, 60, 61), (2, 60, 60), (2, 2, 61), (2, 60, -1)],
)
def test_badGenerationOrPipes(generation: int, ready: int, parent: int) -> None:
    wire = table(ready, parent, [])
    wire["generation"] = generation
    refused(wire, "malformed handoff table: bad generation or pipe fds")


# --- validation: listener entries -------------------------------------------------


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("fd", None, "listener #0 has no 'fd'"),
        ("fd", "70", "listener #0 'fd' is not a int"),
        ("fd", 70.0, "listener #0 'fd' is not a int"),
        ("fd", True, "listener #0 'fd' is not a int"),
        ("kind", None, "listener #0 has no 'kind'"),
        ("kind", 4, "listener #0 'kind' is not a str"),
        ("port", None, "listener #0 has no 'port'"),
        ("port", "80", "listener #0 'port' is not a int"),
        ("requestedPort", None, "listener #0 has no 'requestedPort'"),
        ("requestedPort", [], "listener #0 'requestedPort' is not a int"),
        ("host", None, "listener #0 has no 'host'"),
        ("host", 127, "listener #0 'host' is not a str"),
        ("path", None, "listener #0 has no 'path'"),
        ("path", 5, "listener #0 'path' is not a str"),
    ],
)
def test_listenerFields(name: str, value: object, fragment: str) -> None:
    each = entry(70, port=80)
    if value is None:
        del each[name]
    else:
        each[name] = value
    refused(table(60, 61, [each]), "malformed handoff table", fragment)


@pytest.mark.parametrize("value", [[], "x", 5, None])
def test_listenerNotObject(value: Any) -> None:
    refused(
        table(60, 61, [entry(70, port=80), value]),
        "malformed handoff table: listener #1 is not an object",
    )


@pytest.mark.parametrize("kind", ["ssl", "TCP", "", "unix6"])
def test_listenerUnknownKind(kind: str) -> None:
    refused(
        table(60, 61, [entry(70, kind=kind, port=80)]),
        f"malformed handoff table: listener #0 kind {kind!r}",
    )


@pytest.mark.parametrize(
    "kind, port, requestedPort",
    [
        ("tcp", 0, 0),
        ("tcp", -1, -1),
        ("tcp", 65536, 0),
        ("udp", 0, 0),
        ("tcp", 80, 81),
        ("tcp6", 80, -1),
    ],
)
def test_listenerBadPort(kind: str, port: int, requestedPort: int) -> None:
    refused(
        table(60, 61, [entry(70, kind=kind, port=port, requestedPort=requestedPort)]),
        "malformed handoff table: listener #0 has bad port",
    )


@pytest.mark.parametrize(
    "listenerFDs", [[70, 70], [60], [61], [2], [0], [-5], [70, 71, 70]]
)
def test_listenerBadOrDuplicateFD(listenerFDs: list[int]) -> None:
    entries = [entry(fd, port=80 + i) for i, fd in enumerate(listenerFDs)]
    message = refused(table(60, 61, entries), "malformed handoff table: listener #")
    assert "has bad fd" in message


# --- validation: what the fds really are ------------------------------------------


def test_readyFDClosed(fds: FDs) -> None:
    parentR, _parentW = fds.pipe()
    closed = fds.free()
    refused(table(closed, parentR, []), f"handoff ready fd {closed} is closed")
    assert isOpen(parentR)


def test_parentFDClosed(fds: FDs) -> None:
    _readyR, readyW = fds.pipe()
    closed = fds.free()
    refused(table(readyW, closed, []), f"handoff parent fd {closed} is closed")
    assert isOpen(readyW)


def test_readyFDNotAPipe(fds: FDs, tmp_path: Path) -> None:
    parentR, _parentW = fds.pipe()
    regular = fds.place(os.open(tmp_path / "f", os.O_CREAT | os.O_RDWR))
    refused(table(regular, parentR, []), f"handoff ready fd {regular} is not a pipe")
    assert isOpen(regular) and isOpen(parentR)


def test_parentFDIsASocket(fds: FDs) -> None:
    _readyR, readyW = fds.pipe()
    sock = fds.listening(socket.AF_INET, ("127.0.0.1", 0))
    refused(table(readyW, sock, []), f"handoff parent fd {sock} is not a pipe")
    assert isOpen(sock) and isOpen(readyW)
    accepts(sock, socket.AF_INET)


@pytest.fixture
def pipes(fds: FDs) -> tuple[int, int]:
    """
    (ready, parent): valid pipe ends for tables whose listeners are under test.
    """
    _readyR, readyW = fds.pipe()
    parentR, _parentW = fds.pipe()
    return readyW, parentR


def refusedListener(
    pipes: tuple[int, int], entries: list[dict[str, Any]], *fragments: str
) -> str:
    message = refused(table(*pipes, entries), *fragments)
    assert all(isOpen(fd) for fd in pipes)
    return message


def test_listenerFDClosed(fds: FDs, pipes: tuple[int, int]) -> None:
    closed = fds.free()
    refusedListener(
        pipes,
        [entry(closed, port=80)],
        f"inherited fd {closed} (tcp:127.0.0.1:80) is closed",
    )


def test_listenerFDIsAPipe(fds: FDs, pipes: tuple[int, int]) -> None:
    r, _w = fds.pipe()
    refusedListener(pipes, [entry(r, port=80)], f"inherited fd {r} (", "not a socket")
    assert isOpen(r)


def test_listenerFDIsARegularFile(
    fds: FDs, pipes: tuple[int, int], tmp_path: Path
) -> None:
    regular = fds.place(os.open(tmp_path / "f", os.O_CREAT | os.O_RDWR))
    refusedListener(pipes, [entry(regular, port=80)], "is not a socket")
    assert isOpen(regular)
    # Still the same regular file, still usable.
    assert os.write(regular, b"x") == 1


@pytest.mark.parametrize(
    "declared, actual",
    [
        ("tcp", "udp"),
        ("udp", "tcp"),
        ("tcp6", "tcp"),
        ("tcp", "tcp6"),
        ("tcp", "unix"),
        ("udp6", "udp"),
    ],
)
def test_listenerOtherFamilyOrType(
    fds: FDs, pipes: tuple[int, int], tmp_path: Path, declared: str, actual: str
) -> None:
    if actual == "tcp":
        fd = fds.listening(socket.AF_INET, ("127.0.0.1", 0))
    elif actual == "tcp6":
        fd = fds.listening(socket.AF_INET6, ("::1", 0))
    elif actual == "udp":
        fd = fds.udp(socket.AF_INET, ("127.0.0.1", 0))
    else:
        fd = fds.listening(socket.AF_UNIX, str(tmp_path / "s"))
    port = 80 if actual == "unix" else portOf(fd)
    host = "::1" if declared.endswith("6") else "127.0.0.1"
    message = refusedListener(
        pipes,
        [entry(fd, kind=declared, host=host, port=port)],
        f"inherited fd {fd} is a ",
        "as declared",
    )
    assert isOpen(fd)
    families = {"tcp": socket.AF_INET, "tcp6": socket.AF_INET6, "unix": socket.AF_UNIX}
    if actual in families:
        accepts(fd, families[actual])
    assert f"not {ListenSpec(declared).family.name}/" in message  # type: ignore[arg-type]


def test_listenerNotListening(fds: FDs, pipes: tuple[int, int]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    fd = fds.place(sock)
    port = portOf(fd)
    refusedListener(
        pipes,
        [entry(fd, port=port)],
        f"inherited fd {fd} (tcp:127.0.0.1:{port}) is not listening",
    )
    assert isOpen(fd)


def test_listenerBoundToAnotherPort(fds: FDs, pipes: tuple[int, int]) -> None:
    fd = fds.listening(socket.AF_INET, ("127.0.0.1", 0))
    port = portOf(fd)
    other = port + 1 if port < 65535 else port - 1
    refusedListener(
        pipes,
        [entry(fd, port=other)],
        f"inherited fd {fd} is bound to tcp:127.0.0.1:{port}, not tcp:127.0.0.1:{other}",
    )
    accepts(fd, socket.AF_INET)


def test_udpBoundToAnotherPort(fds: FDs, pipes: tuple[int, int]) -> None:
    fd = fds.udp(socket.AF_INET, ("127.0.0.1", 0))
    port = portOf(fd)
    other = port + 1 if port < 65535 else port - 1
    refusedListener(
        pipes,
        [entry(fd, kind="udp", port=other)],
        f"is bound to udp:127.0.0.1:{port}, not",
    )
    assert isOpen(fd)


def test_unixBoundToAnotherPath(
    fds: FDs, pipes: tuple[int, int], tmp_path: Path
) -> None:
    path = str(tmp_path / "real.sock")
    fd = fds.listening(socket.AF_UNIX, path)
    other = str(tmp_path / "other.sock")
    refusedListener(
        pipes,
        [entry(fd, kind="unix", host="", port=0, path=other)],
        f"inherited fd {fd} is bound to {path!r}, not {other!r}",
    )
    accepts(fd, socket.AF_UNIX)
    assert os.path.exists(path)


def test_laterFailureReleasesEarlierListeners(fds: FDs, pipes: tuple[int, int]) -> None:
    """
    When the second listener is bad, the first one, already checked and wrapped,
    is released again: its fd is open and still listening.
    """
    good = fds.listening(socket.AF_INET, ("127.0.0.1", 0))
    bad = fds.free()
    refusedListener(
        pipes,
        [entry(good, port=portOf(good)), entry(bad, port=81)],
        f"inherited fd {bad} (tcp:127.0.0.1:81) is closed",
    )
    assert isOpen(good)
    accepts(good, socket.AF_INET)


def test_checksOrderTableBeforeFDs(fds: FDs) -> None:
    """
    A malformed entry is reported before any fd is looked at.
    """
    closed = fds.free()
    refused(
        table(closed, closed + 1000, [entry(closed + 2000, kind="nope", port=1)]),
        "kind 'nope'",
    )


# --- fuzzing ----------------------------------------------------------------------

#: strings without line breaks (str.splitlines breaks on more than "\n")
_oneLineText = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Zl", "Zp", "Cs")),
    max_size=20,
)
_cInts = st.integers(min_value=-(2**31), max_value=2**31 - 1)
_smallInts = st.integers(min_value=-3, max_value=80)


def _jsonish(ints: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | ints | st.floats() | _oneLineText,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(_oneLineText, children, max_size=4)
        ),
        max_leaves=12,
    )


_KINDS = st.sampled_from(["tcp", "tcp6", "unix", "udp", "udp6", "ssl", ""])


def _entries(ints: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    value = _jsonish(ints)
    return (
        st.fixed_dictionaries(
            {},
            optional={
                "fd": ints | value,
                "kind": _KINDS | value,
                "host": st.sampled_from(["127.0.0.1", "::1", ""])
                | _oneLineText
                | value,
                "port": ints | value,
                "path": _oneLineText | value,
                "requestedPort": ints | value,
            },
        )
        | value
    )


def _tables(ints: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    """
    Mostly well-shaped tables with wrong bits, and arbitrary JSON values.
    """
    value = _jsonish(ints)
    return (
        st.fixed_dictionaries(
            {},
            optional={
                "version": st.just(1) | ints | value,
                "generation": ints | value,
                "ready": ints | value,
                "parent": ints | value,
                "listeners": st.lists(_entries(ints), max_size=4) | value,
            },
        )
        | value
    )


def _decodeOnlyRaisesHandoffError(value: str) -> None:
    try:
        handoff = decode(value)
    except HandoffError as e:
        message = str(e)
        assert message and len(message.splitlines()) == 1, message
    else:
        # Whatever it took (fds of this process, by chance), give back.
        for each in handoff.listeners:
            each.sock.detach()


_fuzzSettings = settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.mark.slow
@_fuzzSettings
@given(st.text())
def test_fuzzText(value: str) -> None:
    _decodeOnlyRaisesHandoffError(value)


@_fuzzSettings
@given(_tables(_smallInts | _cInts))
def test_fuzzStructures(wire: Any) -> None:
    """
    Any JSON value, in particular tables that are almost right, is refused with a
    one-line L{HandoffError} (fd numbers in the range of a C int).
    """
    _decodeOnlyRaisesHandoffError(json.dumps(wire))


@_fuzzSettings
@example(table(2**40, 61, []))
@given(_tables(st.integers()))
def test_fuzzStructuresAnyInt(wire: Any) -> None:
    _decodeOnlyRaisesHandoffError(json.dumps(wire))


def test_deeplyNested() -> None:
    refused("[" * 100_000, "not JSON")


def test_lineBreakInHostStaysOneLine(fds: FDs, pipes: tuple[int, int]) -> None:
    closed = fds.free()
    refusedListener(pipes, [entry(closed, host="127.0.0.1\nevil", port=80)])


def test_listenerBoundToAnotherHost(fds: FDs, pipes: tuple[int, int]) -> None:
    fd = fds.listening(socket.AF_INET, ("127.0.0.1", 0))
    refusedListener(pipes, [entry(fd, host="0.0.0.0", port=portOf(fd))], "is bound to")
    assert isOpen(fd)


# --- ParentWatcher ------------------------------------------------------------------


def _within(d: Deferred[Any], seconds: float = 10.0) -> Deferred[Any]:
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)


@pytest_twisted.ensureDeferred
async def test_parentWatcherFiresOnceOnClose(fds: FDs) -> None:
    from twisted.internet import reactor

    r, w = fds.pipe()
    calls: list[None] = []
    exited: Deferred[None] = Deferred()

    def onExit() -> None:
        calls.append(None)
        if not exited.called:
            exited.callback(None)

    watcher = ParentWatcher(asReactor(reactor), r, onExit)
    assert watcher in reactor.getReaders()
    assert watcher.fileno() == r
    assert watcher.logPrefix() == "txflip-parent"
    os.close(w)
    await _within(exited)
    assert calls == [None]
    assert watcher not in reactor.getReaders()
    assert not isOpen(r)
    # A late hang-up report changes nothing.
    watcher.connectionLost(None)  # type: ignore[arg-type]
    assert calls == [None]


@pytest_twisted.ensureDeferred
async def test_parentWatcherIgnoresData(fds: FDs) -> None:
    """
    Bytes on the pipe are not end-of-file; closing it afterwards is.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    r, w = fds.pipe()
    exited: Deferred[None] = Deferred()
    watcher = ParentWatcher(asReactor(reactor), r, lambda: exited.callback(None))
    os.write(w, b"x" * 1000)
    # Let the reactor read the data: poll (bounded) until the pipe is empty.
    for _ in range(1000):
        await deferLater(reactor, 0.001, lambda: None)
        if not _pending(r):
            break
    assert not _pending(r)
    assert not exited.called
    assert watcher in reactor.getReaders()
    os.close(w)
    await _within(exited)
    assert watcher not in reactor.getReaders()


def _pending(fd: int) -> int:
    import fcntl
    import struct
    import termios

    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


def test_parentWatcherConnectionLostIsEOF(fds: FDs) -> None:
    """
    With a fake reactor: Twisted reporting hang-up as connectionLost counts as
    end-of-file, once.
    """
    from twisted.internet.testing import MemoryReactor

    reactor = MemoryReactor()
    r, w = fds.pipe()
    calls: list[None] = []
    watcher = ParentWatcher(asReactor(reactor), r, lambda: calls.append(None))
    assert watcher in reactor.getReaders()
    assert not os.get_blocking(r)
    watcher.doRead()  # nothing to read yet: EAGAIN, not EOF
    assert calls == []
    os.close(w)
    watcher.connectionLost(None)  # type: ignore[arg-type]
    watcher.connectionLost(None)  # type: ignore[arg-type]
    assert calls == [None]
    assert watcher not in reactor.getReaders()
    assert not isOpen(r)


def test_aliasesRoundTrip(tmp_path: Any) -> None:
    """
    Names systemd gave a socket survive the handoff, so that a later generation
    asking for systemd:name=web finds it.
    """
    tcp = ListenSpec("tcp", host="127.0.0.1", port=8080)
    [listener] = describedAll([(tcp, tcp)])
    listener.aliases = ("index=0", "name=web")
    wire = json.loads(encode(2, [listener]))
    assert wire["listeners"][0]["aliases"] == ["index=0", "name=web"]
    wire["listeners"][0]["aliases"] = "name=web"
    refused(wire, "bad aliases")


def test_extraFDsPlacedAndNamed(fds: FDs) -> None:
    """
    Named extra fds (what a supervisor or a connection mover passes) go after the
    listeners, in name order, and the child's table names them.
    """
    tcp = ListenSpec("tcp", host="127.0.0.1", port=8080)
    listeners = describedAll([(tcp, tcp)])
    movesR, _ = fds.pipe()
    supervisorR, _ = fds.pipe()
    value, childFDs = plan(2, listeners, {"supervisor": supervisorR, "moves": movesR})
    wire = json.loads(value)
    assert wire["fds"] == {"moves": 6, "supervisor": 7}
    assert (childFDs[6], childFDs[7]) == (movesR, supervisorR)
    assert (childFDs[3], childFDs[4]) == ("r", "w")
    # As the child sees it (fds where they are in this process):
    _readyR, readyW = fds.pipe()
    parentR, _ = fds.pipe()
    handoff = decode(
        json.dumps(
            table(readyW, parentR, [])
            | {"fds": {"moves": movesR, "supervisor": supervisorR}}
        )
    )
    assert handoff.extraFDs == {"moves": movesR, "supervisor": supervisorR}
    assert not os.get_inheritable(movesR)


def test_extraFDsChecked(fds: FDs) -> None:
    _readyR, readyW = fds.pipe()
    parentR, _ = fds.pipe()
    base = table(readyW, parentR, [])
    refused(base | {"fds": [3]}, "'fds' is not an object")
    refused(base | {"fds": {"moves": "7"}}, "is not a int")
    refused(base | {"fds": {"moves": readyW}}, "fd 'moves' is bad")
    refused(base | {"fds": {"moves": FIRST_HIGH_FD + 900}}, "'moves'", "closed")


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no words")


def test_anExceptionToldToTheParentIsOneBoundedLine() -> None:
    """
    What a child that dies of an exception tells its parent: type and message,
    as the parent's one-line error ends.
    """
    taken = OSError(98, "Address already in use")
    assert summarize(CannotListenError("127.0.0.1", 80, taken)) == (
        "CannotListenError: Couldn't listen on 127.0.0.1:80:"
        " [Errno 98] Address already in use"
    )
    long = summarize(ValueError("first\n  second " + "x" * 1000))
    assert long.startswith("ValueError: first second xx") and "\n" not in long
    assert len(long) == SUMMARY_WIDTH and long.endswith("\N{HORIZONTAL ELLIPSIS}")
    assert summarize(_Unprintable()) == "_Unprintable"
    assert summarize(KeyboardInterrupt()) == "KeyboardInterrupt"
