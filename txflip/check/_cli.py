"""
C{txflip check}: prove, against your own running server, that upgrades lose nothing.

It puts a line-echo load on the server (short-lived clients: connect, one line, its
echo, close; long-lived clients: one connection each, a line every few milliseconds,
reconnecting when the server closes it), sends the server C{SIGHUP} a number of
times, waits for each upgrade to complete (the pid file names a new live pid and the
old pid is gone), and reports every error the clients saw, every line that was sent
but never echoed, and how long the upgrades took.

The parts: the counters (L{txflip.check._stats}), the line-echo clients
(L{txflip.check._echoload}; the HTTP ones are in L{txflip.check._httpload}), following the
serving pid (L{txflip.check._pid}, or L{txflip.check._control} through the control
socket), the run loop (L{txflip.check._drive}) and the report
(L{txflip.check._report}).  This module is the command line.

Every wait is bounded: each connect and each echo by C{--io-timeout}, each upgrade by
C{--upgrade-timeout}, the load by C{--duration}.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from txflip._cli import argNumber, argSeconds
from txflip._errors import CheckError

# The checker's parts (its HTTP client, h11, the load) are imported when a check
# runs: every other txflip command, txflip run's supervisor first, registers this
# parser and never needs them.
if TYPE_CHECKING:
    from txflip.check._pid import Upgrade
    from txflip.check._report import Report


def runCheck(
    host: str,
    port: int,
    *,
    upgradeOne: Callable[[int], Upgrade] | None,
    shortClients: int,
    longClients: int,
    duration: float,
    upgrades: int,
    interval: float,
    ioTimeout: float,
    maxErrors: int,
    progress: IO[str] | None = None,
) -> Report:
    """
    The line-echo check: L{Load} through L{run_load}, upgrading the service with
    C{upgrade_one(number)}.
    """
    from txflip.check._drive import runLoad
    from txflip.check._echoload import Load
    from txflip.check._report import Report

    load = Load(
        host, port, shortClients, longClients, interval=interval, timeout=ioTimeout
    )
    run = runLoad(
        load,
        upgradeOne=upgradeOne,
        duration=duration,
        upgrades=upgrades,
        progress=progress,
    )
    return Report(
        f"{host}:{port}",
        run.seconds,
        {"short": shortClients, "long": longClients},
        {"short": load.shortStats, "long": load.longStats},
        upgrades,
        run.upgrades,
        maxErrors,
        stuckThreads=not run.stopped,
    )


_count = argNumber(int, 0, "expected a whole number >= 0")


_positiveInt = argNumber(int, 1, "expected a whole number >= 1")


def _port(text: str) -> int:
    port: int = _positiveInt(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1-65535, not {text!r}")
    return port


def register(subparsers: Any) -> None:
    """
    Add the C{check} subcommand.
    """
    parser = subparsers.add_parser(
        "check",
        help="prove that a running server upgrades without errors under load",
        description=(
            "Load a line-echo server (--port) or an HTTP server (--http URL) with"
            " short- and long-lived clients, upgrade it with SIGHUP or through its"
            " control socket, and report every error, lost line or request and"
            " upgrade latency."
            " Exit status 1 when errors exceed --max-errors or an upgrade did not"
            " complete, 2 when the target is unusable."
        ),
    )
    target = parser.add_argument_group("target")
    target.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    where = target.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=_port, help="a line-echo server's port")
    where.add_argument(
        "--http", metavar="URL", help="an HTTP server: GET (or POST) this http:// URL"
    )
    pid = target.add_mutually_exclusive_group()
    pid.add_argument(
        "--pid-file",
        dest="pidFile",
        metavar="PATH",
        help="the server's pid file (it must name each new generation)",
    )
    pid.add_argument(
        "--pid",
        type=_positiveInt,
        metavar="N",
        help="the server's pid; successors are found as its children (Linux)",
    )
    pid.add_argument(
        "--control",
        metavar="PATH",
        help="the service's control socket: upgrades say why they failed",
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "--short-clients",
        dest="shortClients",
        type=_count,
        default=4,
        metavar="K",
        help="clients doing connect, one line, close, repeat (default: 4)",
    )
    load.add_argument(
        "--long-clients",
        dest="longClients",
        type=_count,
        default=4,
        metavar="M",
        help="clients holding a connection, a line (HTTP: a request) every"
        " --interval (default: 4)",
    )
    load.add_argument(
        "--post-bytes",
        dest="postBytes",
        type=_count,
        default=0,
        metavar="N",
        help="HTTP: also POST N-byte bodies, sent in 4 pieces --interval apart",
    )
    load.add_argument(
        "--upload-clients",
        dest="uploadClients",
        type=_count,
        metavar="K",
        help="HTTP: clients sending --post-bytes bodies (default: 2 with --post-bytes)",
    )
    load.add_argument(
        "--expect-status",
        dest="expectStatus",
        metavar="LIST",
        help="HTTP: statuses that count as right, like 200,204 or 2xx"
        " (default: 2xx,3xx)",
    )
    load.add_argument(
        "--duration",
        type=argSeconds,
        default=10.0,
        metavar="SECONDS",
        help="default: 10",
    )
    load.add_argument(
        "--interval",
        type=argSeconds,
        default=0.005,
        metavar="SECONDS",
        help="long clients' pause between lines (default: 0.005)",
    )
    load.add_argument(
        "--io-timeout",
        dest="ioTimeout",
        type=argSeconds,
        default=5.0,
        metavar="SECONDS",
        help="bound on each connect and each echo (default: 5)",
    )
    upgrades = parser.add_argument_group("upgrades")
    upgrades.add_argument(
        "--upgrades",
        type=_count,
        default=3,
        metavar="N",
        help="SIGHUPs, evenly spaced over the run (default: 3)",
    )
    upgrades.add_argument(
        "--upgrade-timeout",
        dest="upgradeTimeout",
        type=argSeconds,
        default=30.0,
        metavar="SECONDS",
        help="how long an upgrade may take, SIGHUP to old pid gone (default: 30)",
    )
    output = parser.add_argument_group("result")
    output.add_argument(
        "--max-errors",
        dest="maxErrors",
        type=_count,
        default=0,
        metavar="N",
        help="errors tolerated before exit status 1 (default: 0)",
    )
    output.add_argument("--json", action="store_true", help="print JSON, not a table")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """
    Run C{txflip check}; the exit status.
    """
    from txflip.check._http import runHTTP
    from txflip.check._report import BAD_INPUT

    try:
        return runHTTP(args, upgrader) if args.http is not None else _main(args)
    except CheckError as e:
        print(f"txflip check: {e}", file=sys.stderr)
        return BAD_INPUT


def _main(args: argparse.Namespace) -> int:
    from txflip.check._echoload import probeEcho
    from txflip.check._report import show

    if args.shortClients + args.longClients == 0:
        raise CheckError("nothing to do: --short-clients and --long-clients are 0")
    if args.shortClients + args.longClients > 1000:
        raise CheckError("at most 1000 clients in all")
    httpOnly = {
        "--post-bytes": args.postBytes,
        "--upload-clients": args.uploadClients,
        "--expect-status": args.expectStatus,
    }
    for option, value in httpOnly.items():
        if value:
            raise CheckError(f"{option} needs --http")
    upgradeOne = upgrader(args)
    probeEcho(args.host, args.port, args.ioTimeout)
    report = runCheck(
        args.host,
        args.port,
        upgradeOne=upgradeOne,
        shortClients=args.shortClients,
        longClients=args.longClients,
        duration=args.duration,
        upgrades=args.upgrades,
        interval=args.interval,
        ioTimeout=args.ioTimeout,
        maxErrors=args.maxErrors,
        progress=sys.stderr,
    )
    return show(report, args.json)


def upgrader(args: argparse.Namespace) -> Callable[[int], Upgrade] | None:
    """
    How to upgrade the service: through its control socket, or with C{SIGHUP}
    to the pid that C{--pid-file} or C{--pid} names; checked now.

    @raise CheckError: with the reason.
    """
    from txflip.check._control import controlUpgrade, servingPids
    from txflip.check._pid import Server, signalUpgrade

    if args.control is not None:
        servingPids(args.control, args.ioTimeout)
        return functools.partial(
            controlUpgrade, args.control, timeout=args.upgradeTimeout
        )
    if args.pidFile is not None or args.pid is not None:
        server = Server(args.pidFile, args.pid)
        server.validate()
        return functools.partial(signalUpgrade, server, timeout=args.upgradeTimeout)
    if args.upgrades:
        raise CheckError(
            "upgrades need the server's pid: give --pid-file, --pid or --control"
        )
    return None
