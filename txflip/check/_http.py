"""
C{txflip check --http URL}: the same proof as the line-echo check, for the HTTP
services people actually run (twisted.web, Klein), with no code of theirs changed.

One GET first (is it there, and does it answer as expected?), then the HTTP load
(L{HTTPLoad}) through the check's run loop, upgrades and report.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from txflip._errors import CheckError
from txflip.check._clients import connectOrFail
from txflip.check._drive import runLoad
from txflip.check._httpexchange import Exchange, Target, expectStatus
from txflip.check._httpload import HTTPLoad
from txflip.check._pid import Upgrade
from txflip.check._report import Report, show

DEFAULT_STATUS = "2xx,3xx"
UPLOAD_CLIENTS = 2  # with --post-bytes, unless --upload-clients says otherwise


def probe(target: Target, accept: Callable[[int], bool], timeout: float) -> None:
    """
    One GET before any load.

    @raise CheckError: why the target is unusable.
    """
    with connectOrFail(target.host, target.port, timeout) as sock:
        outcome = Exchange(sock, target).request(timeout, accept)
    if outcome.kind == "bad_status":
        raise CheckError(
            f"GET {target} answered {outcome.status}, not an expected status"
            " (see --expect-status)"
        )
    if outcome.kind:
        raise CheckError(
            f"GET {target} failed: {outcome.kind.replace('_', ' ')}: {outcome.detail}"
        )


def runHTTP(
    args: argparse.Namespace,
    upgrader: Callable[[argparse.Namespace], Callable[[int], Upgrade] | None],
) -> int:
    """
    Run C{txflip check --http}; the exit status.

    @param upgrader: makes the upgrade step from C{args} (checking them).

    @raise CheckError: for bad input or an unusable target.
    """
    target = Target.fromURL(args.http)
    try:
        accept = expectStatus(args.expectStatus or DEFAULT_STATUS)
    except ValueError as e:
        raise CheckError(f"--expect-status: {e}") from None
    uploads = args.uploadClients
    if uploads is None:
        uploads = UPLOAD_CLIENTS if args.postBytes else 0
    if uploads and not args.postBytes:
        raise CheckError("--upload-clients needs --post-bytes")
    clients = args.shortClients + args.longClients + uploads
    if clients == 0:
        raise CheckError("nothing to do: no clients")
    if clients > 1000:
        raise CheckError("at most 1000 clients in all")
    upgradeOne = upgrader(args)
    probe(target, accept, args.ioTimeout)
    load = HTTPLoad(
        target,
        accept=accept,
        short=args.shortClients,
        keepAlive=args.longClients,
        uploads=uploads,
        postBytes=args.postBytes,
        interval=args.interval,
        timeout=args.ioTimeout,
    )
    run = runLoad(
        load,
        upgradeOne=upgradeOne,
        duration=args.duration,
        upgrades=args.upgrades,
        progress=sys.stderr,
    )
    report = Report(
        str(target),
        run.seconds,
        {name: each.nThreads for name, each in load.clients.items()},
        load.groups,
        args.upgrades,
        run.upgrades,
        args.maxErrors,
        stuckThreads=not run.stopped,
    )
    return show(report, args.json)
