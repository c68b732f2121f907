"""
C{txflip check --http}, end to end: real servers (twistd web, Klein, a plain
Resource app), real upgrades, the real command; and, in process, servers that
misbehave in each way a user would call a failure.
"""

from __future__ import annotations

import re
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, twistdCommand
from tests.harness import (
    ServerProcess,
    freePort,
    readPidFile,
    txflipCheck,
    waitFor,
)
from txflip._cli import main
from txflip.check._httpexchange import Target, expectStatus
from txflip.check._httpload import HTTPClients

HOST = "127.0.0.1"
FLIP = "flip:tcp:0:interface=127.0.0.1"


@dataclass
class Served:
    proc: ServerProcess
    pidfile: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def check(self, *args: str) -> tuple[int, dict[str, Any], str]:
        """Run the check against this server, then track whoever serves now."""
        result = txflipCheck("--http", self.url, *args)
        self.proc.track(readPidFile(self.pidfile) or 0)
        return result


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """
    C{serve(argv, pidfile, env=None)}: start a server, wait until it is ready
    and listening; every process of it is killed at the end of the test.
    """
    started: list[ServerProcess] = []

    def start(
        argv: list[str], pidfile: Path, env: dict[str, str] | None = None
    ) -> Served:
        proc = ServerProcess(
            argv,
            tmp_path / f"server{len(started)}.log",
            cwd=tmp_path,
            env={"PYTHONPATH": str(ROOT), **(env or {})},
        )
        started.append(proc)
        waitFor(lambda: readPidFile(pidfile), 20, what=f"ready: {proc.logText()}")
        found = waitFor(
            lambda: (
                re.search(r"listening on tcp:127\.0\.0\.1:(\d+)", proc.logText())
                or re.search(r"Site starting on (\d+)", proc.logText())
            ),
            20,
            what="the port in the log",
        )
        return Served(proc, pidfile, int(found.group(1)))

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_bytes(b"<p>hello</p>\n" * 2000)
    return root


def _why(report: dict[str, object], stderr: str = "") -> object:
    """What an assertion shows about a report: its failures and first errors."""
    total = report["total"]
    assert isinstance(total, dict)
    upgrades = [(u["to_new_s"], u["to_old_gone_s"]) for u in report["upgrades"]]  # type: ignore[attr-defined]
    return report["failures"], upgrades, total["samples"][:5], stderr


def _pids(report: dict[str, object]) -> set[int]:
    upgrades = report["upgrades"]
    assert isinstance(upgrades, list)
    return {u["old_pid"] for u in upgrades} | {u["new_pid"] for u in upgrades}


@pytest.mark.slow
def test_twistdWebFlipFiveUpgrades(serve, site: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "twistd.pid"
    server = serve(
        [*twistdCommand(), "-n", "--pidfile", str(pidfile), "flip", "web",
         "--listen", FLIP, "--path", str(site)],
        pidfile,
    )  # fmt: skip
    status, report, stderr = server.check(
        "--pid-file", str(pidfile), "--short-clients", "3", "--long-clients", "3",
        "--duration", "15", "--upgrades", "5", "--upgrade-timeout", "20",
    )  # fmt: skip
    assert status == 0, _why(report, stderr)
    assert report["ok"] and report["upgrades_completed"] == 5, report["failures"]
    assert report["total"]["errors"] == 0, report["total"]
    assert report["short"]["requests"] > 100 and report["keepalive"]["requests"] > 100
    # Keep-alive connections move to the new generation: none is closed.
    assert report["keepalive"]["closed_by_server"] == 0, report["keepalive"]
    assert len(_pids(report)) == 6
    assert report["total"]["response_latency_s"]["p99"] > 0
    assert report["throughput"]["requests_per_s"] > 0


@pytest.mark.slow
def test_kleinAppWithUploads(serve, tmp_path: Path) -> None:
    pidfile = tmp_path / "klein.pid"
    server = serve(
        [
            sys.executable,
            str(ROOT / "tests" / "kleinapp.py"),
            f"{FLIP}:pidfile={pidfile}",
        ],
        pidfile,
    )
    status, report, stderr = server.check(
        "--pid-file", str(pidfile), "--short-clients", "2", "--long-clients", "2",
        "--post-bytes", "200000", "--upload-clients", "2",
        "--duration", "8", "--upgrades", "2", "--upgrade-timeout", "20",
    )  # fmt: skip
    assert status == 0, _why(report, stderr)
    assert report["total"]["errors"] == 0, report["total"]
    assert report["upgrades_completed"] == 2
    assert report["upload"]["requests"] > 10, report["upload"]
    assert report["upload_clients"] == 2


def _resourceApp(serve, tmp_path: Path, env: dict[str, str]) -> tuple[Served, Path]:
    pidfile, control = tmp_path / "app.pid", tmp_path / "control.sock"
    app = str(ROOT / "tests" / "resourceapp.py")
    argv = [sys.executable, app, "library", str(pidfile), str(control)]
    return serve(argv, pidfile, env), control


@pytest.mark.slow
def test_500DuringUpgradeIsCaught(serve, tmp_path: Path) -> None:
    """
    The new generation answers 500 for its first second: the check fails, and
    says so, though the upgrade completed.
    """
    server, control = _resourceApp(serve, tmp_path, {"WEBAPP_FAIL_FIRST": "1"})
    status, report, _ = server.check(
        "--control", str(control), "--short-clients", "2", "--long-clients", "2",
        "--duration", "4", "--upgrades", "1",
    )  # fmt: skip
    assert status == 1 and not report["ok"]
    assert report["upgrades_completed"] == 1, report["failures"]
    errors = report["total"]["errors_by_kind"]
    assert (
        errors["bad_status"] > 0 and errors["bad_status"] == report["total"]["errors"]
    )
    assert report["total"]["samples"][0].startswith("bad_status: status 500")


@pytest.mark.slow
def test_controlSocketSaysWhyAnUpgradeFailed(serve, tmp_path: Path) -> None:
    server, control = _resourceApp(serve, tmp_path, {"WEBAPP_BROKEN_LATER": "1"})
    status, report, _ = server.check(
        "--control", str(control), "--short-clients", "1", "--long-clients", "1",
        "--duration", "2", "--upgrades", "1",
    )  # fmt: skip
    assert status == 1
    assert report["total"]["errors"] == 0  # the old generation kept serving
    (failure,) = report["failures"]
    assert re.fullmatch(
        r"upgrade 1: the service says: child pid=\d+ exited with status 3 before it"
        r" was ready",
        failure,
    ), failure


@pytest.mark.slow
def test_naiveRestartIsCaught(serve, site: Path, tmp_path: Path) -> None:
    """
    Plain twistd web (SIGHUP kills it) that a supervisor restarts: downtime.
    """
    pidfile, port = tmp_path / "twistd.pid", freePort()
    twistd = [*twistdCommand(), "-n", "--pidfile", str(pidfile), "web", "--listen",
              f"tcp:{port}:interface=127.0.0.1", "--path", str(site)]  # fmt: skip
    naive = [sys.executable, str(ROOT / "tests" / "naive_server.py"), "--restart"]
    server = serve([*naive, *twistd], pidfile)
    status, report, _ = server.check(
        "--pid-file", str(pidfile), "--short-clients", "4", "--long-clients", "2",
        "--duration", "5", "--upgrades", "2", "--upgrade-timeout", "20",
    )  # fmt: skip
    assert status == 1 and not report["ok"]
    assert report["upgrades_completed"] == 2, report["failures"]
    errors = report["total"]["errors_by_kind"]
    assert errors["refused"] + errors["reset"] + errors["dropped"] > 0, errors


# --------------------------------------------------------------------------
# Misbehaving servers, in process
# --------------------------------------------------------------------------


RESPONSES = {
    "ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "close": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    "short": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
    "404": b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
}


def _handler(behaviour: str) -> type[socketserver.BaseRequestHandler]:
    """
    C{ok}, C{close}, C{short}, C{chunked}, C{notFound}: that response to every
    request, then close unless it was C{ok}.  C{drop-second}: C{ok} to the first
    request on a connection, and a close without a response to the next.
    C{idle-close}: C{ok}, then a close 20 ms later, before the next request.
    """

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            sock.settimeout(5)
            served = 0
            buffered = b""
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffered += data
                while b"\r\n\r\n" in buffered:
                    _, _, buffered = buffered.partition(b"\r\n\r\n")
                    served += 1
                    if behaviour == "drop-second" and served == 2:
                        return
                    name = behaviour if behaviour in RESPONSES else "ok"
                    sock.sendall(RESPONSES[name])
                    if name != "ok":
                        return
                    if behaviour == "idle-close":
                        sock.settimeout(0.02)

    return Handler


@pytest.fixture
def misbehaving() -> Iterator[Callable[[str], Target]]:
    servers: list[socketserver.ThreadingTCPServer] = []

    def start(behaviour: str) -> Target:
        server = socketserver.ThreadingTCPServer((HOST, 0), _handler(behaviour))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return Target.fromURL(f"http://{HOST}:{server.server_address[1]}/")

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "behaviour, keepAlive, kind",
    [
        ("short", False, "cut_short"),
        ("chunked", False, "cut_short"),
        ("404", False, "bad_status"),
        ("drop-second", True, "dropped"),
    ],
)
def test_failuresAreCounted(
    misbehaving, behaviour: str, keepAlive: bool, kind: str
) -> None:
    target = misbehaving(behaviour)
    clients = HTTPClients(
        target, 1, accept=expectStatus("2xx,3xx"), keepAlive=keepAlive, timeout=2
    )
    with clients:
        waitFor(lambda: clients.stats.errorsTotal() >= 3, 10, what=f"{kind} errors")
    stats = clients.stats
    assert stats.count(kind) == stats.errorsTotal(), stats
    assert stats.lost == (0 if kind == "bad_status" else stats.errorsTotal()), stats


@pytest.mark.parametrize("behaviour", ["close", "idle-close"])
def test_cleanClosesAreNotFailures(misbehaving, behaviour: str) -> None:
    """
    C{Connection: close}, or a close between responses: reconnect, no error.
    """
    target = misbehaving(behaviour)
    clients = HTTPClients(
        target, 1, accept=expectStatus("2xx"), keepAlive=True, interval=0.05
    )
    with clients:
        waitFor(lambda: clients.stats.closedByServer >= 3, 10, what="closes")
    stats = clients.stats
    assert stats.errorsTotal() == 0, stats
    assert stats.connections >= 3 and stats.exchanges >= 3, stats


def test_expectStatus() -> None:
    accept = expectStatus("200, 3xx,404")
    assert [accept(s) for s in (200, 201, 302, 399, 404, 500)] == [
        True, False, True, True, True, False,
    ]  # fmt: skip
    for bad in ("2yy", "600", "", "2xx,,"):
        with pytest.raises(ValueError):
            expectStatus(bad)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--http", "ftp://x/"], "bad URL 'ftp://x/': only http:// URLs are supported"),
        (["--http", "http://:80/"], "bad URL 'http://:80/': no host"),
        (
            ["--http", "http://h:99999/"],
            "bad URL 'http://h:99999/': Port out of range 0-65535",
        ),
        (
            ["--http", "{url}", "--expect-status", "2yy"],
            "--expect-status: expected statuses like 200 or 2xx, not '2yy'",
        ),
        (["--port", "{port}", "--post-bytes", "9"], "--post-bytes needs --http"),
        (
            ["--http", "{url}", "--upload-clients", "2"],
            "--upload-clients needs --post-bytes",
        ),
        (
            ["--http", "{url}", "--short-clients", "0", "--long-clients", "0"],
            "nothing to do: no clients",
        ),
        (["--http", "{url}"], "cannot connect to 127.0.0.1:{port}: connection refused"),
        (
            ["--http", "{notFound}"],
            "GET {notFound} answered 404, not an expected status (see --expect-status)",
        ),
        (
            ["--http", "{short}"],
            "GET {short} failed: cut short: peer closed connection without sending"
            " complete message body (received 3 bytes, expected 10)",
        ),
    ],
)
@pytest.mark.slow
def test_badInputIsOneLine(
    misbehaving, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    port = freePort()
    values = {
        "port": str(port),
        "url": f"http://{HOST}:{port}/",
        "notFound": str(misbehaving("404")),
        "short": str(misbehaving("short")),
    }
    argv = ["check", "--upgrades", "0", "--duration", "0.2"]
    status = main(argv + [a.format(**values) for a in args])
    captured = capsys.readouterr()
    assert (status, captured.out) == (2, "")
    assert captured.err == f"txflip check: {message.format(**values)}\n"


def test_expectedStatusPasses(misbehaving, capsys: pytest.CaptureFixture[str]) -> None:
    url = str(misbehaving("404"))
    status = main(
        ["check", "--http", url, "--expect-status", "404", "--upgrades", "0",
         "--duration", "0.3", "--short-clients", "1", "--long-clients", "0"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0, out
    assert f"txflip check: {url} for " in out and "1 short + 0 keepalive" in out
    assert "OK: 0 errors (max 0), 0 lost requests, 0/0 upgrades completed" in out
