"""
C{txflip upgrade} and C{txflip status}: an operator's view of a running service.

C{txflip upgrade} is what C{ExecReload=} wants: it returns only once the upgrade
worked (exit 0, printing the new pid) or failed (exit 1, printing why).  Through the
control socket the service itself says why; with only a pid file, we send SIGHUP and
watch the file, and can tell only success or a timeout (so a C{txflip run}
supervisor, whose pid never changes, is refused: use its control socket).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import sys
import time
import unicodedata
from typing import Any

from txflip._cli import argSeconds
from txflip.generation._pidfile import PidFile, pidAlive, startTime

DEFAULT_TIMEOUT = 90.0


class CommandError(Exception):
    """
    Reported as one line, exit status 1.
    """


def request(path: str, command: str, timeout: float) -> dict[str, Any]:
    """
    Send C{command} on the control socket at C{path}; return the service's reply.
    """
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
            s.sendall(command.encode() + b"\n")
        except OSError as e:
            raise CommandError(
                f"cannot reach the control socket {path}: {e.strerror or e}"
            ) from None
        reply = b""
        while not reply.endswith(b"\n"):
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                raise CommandError(
                    f"timed out after {timeout:g} s waiting for the service's answer"
                ) from None
            except OSError as e:
                raise CommandError(
                    f"control socket {path}: {e.strerror or e}"
                ) from None
            if not chunk:
                break
            reply += chunk
    try:
        answer = json.loads(reply)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise CommandError(f"the service sent an unreadable answer: {reply[:200]!r}")
    return answer


#: How much later than its pid file a process may seem to have started (the
#: clock-tick rounding of its start time).
START_SLACK = 0.05


def _readPid(pidFile: PidFile) -> int:
    """
    The pid the file names, once we know it is the service: the generation that
    serves writes the file once it runs, so a process that started after the file
    was written got a pid the service no longer uses (pids are reused).
    """
    pid = pidFile.read()
    if pid is None:
        raise CommandError(f"no pid in {pidFile.path}")
    if not pidAlive(pid):
        raise CommandError(f"pid {pid} from {pidFile.path} is not running")
    started = startTime(pid)
    try:
        written = os.stat(pidFile.path).st_mtime
    except OSError as e:
        raise CommandError(f"cannot read {pidFile.path}: {e.strerror}") from None
    if started is not None and started > written + START_SLACK:
        raise CommandError(
            f"pid {pid} from {pidFile.path} is not the service: it started after"
            " the file was written (the service's pid was reused by another"
            " process); not signalled"
        )
    return pid


def isSupervisor(pid: int) -> bool:
    """
    Whether C{pid} runs C{txflip run} (its command line: C{txflip run ...} or
    C{python -m txflip run ...}).  L{False} where C{/proc} does not tell.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return any(
        os.path.basename(arg) == b"txflip" and after == b"run"
        for arg, after in itertools.pairwise(args)
    )


def upgradeWithPidFile(path: str, timeout: float) -> int:
    """
    SIGHUP the pid in C{path}; return the new pid once the file names a live one.

    A C{txflip run} supervisor's pid never changes (its workers' do), so this
    could only time out after a successful upgrade: it is refused at once.
    """
    pidFile = PidFile(path)
    old = _readPid(pidFile)
    if isSupervisor(old):
        raise CommandError(
            f"pid {old} from {path} is a txflip run supervisor, whose pid never"
            " changes: upgrade it with --control and its control socket (or kill"
            " -HUP it and read its log)"
        )
    os.kill(old, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = pidFile.read()
        if new is not None and new != old and pidAlive(new):
            return new
        time.sleep(0.02)
    raise CommandError(
        f"timed out after {timeout:g} s: {path} still names pid {old} (the upgrade"
        " failed or is slow: the service's log says why)"
    )


def runUpgrade(args: argparse.Namespace) -> int:
    try:
        if args.control:
            answer = request(args.control, "upgrade", args.timeout)
            if not answer.get("ok"):
                raise CommandError(f"upgrade failed: {answer.get('error', 'unknown')}")
            pids = answer.get("pids", [answer.get("pid")])
            if not isinstance(pids, list) or not all(isinstance(p, int) for p in pids):
                raise CommandError(f"the service sent an unreadable answer: {answer}")
            pid = " ".join(map(str, pids))
        else:
            pid = str(upgradeWithPidFile(args.pid_file, args.timeout))
    except CommandError as e:
        print(f"txflip upgrade: {e}", file=sys.stderr)
        return 1
    print(pid)
    return 0


def _when(at: object) -> str:
    stamp = at if isinstance(at, (int, float)) else 0
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(stamp))


def _startedBy(started: object) -> str:
    """
    C{upgrade from pid 4100 at ..., ready in 0.31 s} / C{a first start at ...}.
    """
    if not isinstance(started, dict):
        return "unknown"
    ready = started.get("readyIn")
    readyText = f", ready in {ready:.2f} s" if isinstance(ready, (int, float)) else ""
    if started.get("pid") is None:
        return f"a first start at {_when(started.get('at'))}{readyText}"
    return f"upgrade from pid {started['pid']} at {_when(started.get('at'))}{readyText}"


def printable(value: object) -> str:
    """
    C{value} as text safe for a terminal: control characters (ESC, BEL, a
    newline: a socket path may hold any of them) escaped as Python does
    (C{\\x1b}), and backslashes doubled so that an escape cannot be forged;
    other characters, non-ASCII letters included, as they are.
    """
    return "".join(
        repr(c)[1:-1] if c == "\\" or unicodedata.category(c) == "Cc" else c
        for c in str(value)
    )


def formatStatus(status: dict[str, Any]) -> str:
    last = status.get("lastUpgrade")
    lastText = "none"
    if isinstance(last, dict):
        lastText = f"{last.get('result')} (at {_when(last.get('at'))})"
    rows = [
        ("pid", status.get("pid")),
        ("generation", status.get("generation")),
        ("ready", "yes" if status.get("ready") else "no"),
        ("uptime", f"{status.get('uptime', 0):.1f} s"),
        ("connections", status.get("connections")),
        ("listeners", ", ".join(status.get("listeners") or []) or "none"),
        ("started by", _startedBy(status.get("startedBy"))),
        ("last upgrade", lastText),
    ]
    if status.get("supervisor"):
        rows[1:1] = [("state", status.get("state")), ("workers", status.get("wanted"))]
        if status.get("note"):
            rows.append(("note", status["note"]))
    text = "\n".join(f"{name:<13}{printable(value)}" for name, value in rows)
    workers = status.get("workers")
    if isinstance(workers, list) and workers:
        lines = [f"\n{'worker pid':>10}  generation  state     started   connections"]
        for w in workers:
            started = time.strftime("%H:%M:%S", time.localtime(w.get("started", 0)))
            count = w.get("connections")
            lines.append(
                f"{w.get('pid'):>10}  {w.get('generation'):>10}"
                f"  {printable(w.get('state')):<8}"
                f"  {started}  {'?' if count is None else count:>11}"
            )
        text += "\n".join(lines)
    return text


def runStatus(args: argparse.Namespace) -> int:
    try:
        answer = request(args.control, "status", args.timeout)
        if not answer.get("ok"):
            raise CommandError(answer.get("error", "unknown error"))
    except CommandError as e:
        print(f"txflip status: {e}", file=sys.stderr)
        return 1
    answer.pop("ok", None)
    print(json.dumps(answer, indent=2) if args.json else formatStatus(answer))
    return 0


def register(subparsers: Any) -> None:
    upgrade = subparsers.add_parser(
        "upgrade",
        help="upgrade a running service and wait for the outcome",
        description="Upgrade a running txflip service; exit 0 printing the new pid"
        " once it serves, or 1 printing why not.",
    )
    target = upgrade.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--control", metavar="PATH", help="the service's control socket"
    )
    target.add_argument(
        "--pid-file", metavar="PATH", help="the service's pid file (SIGHUP, then watch)"
    )
    upgrade.add_argument(
        "--timeout",
        type=argSeconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up after this long (default {DEFAULT_TIMEOUT:g})",
    )
    upgrade.set_defaults(func=runUpgrade)

    status = subparsers.add_parser(
        "status",
        help="show a running service's state",
        description="Show pid, generation, readiness, uptime, open connections and"
        " the last upgrade of a running txflip service.",
    )
    status.add_argument("--control", metavar="PATH", required=True)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--timeout", type=argSeconds, default=10.0, metavar="SECONDS")
    status.set_defaults(func=runStatus)
