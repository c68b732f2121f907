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

from ._check import CheckError, Report, connect_or_fail, run_load, show, upgrader
from ._httpexchange import Exchange, Target, expectStatus
from ._httpload import HTTPLoad

DEFAULT_STATUS = "2xx,3xx"
UPLOAD_CLIENTS = 2  # with --post-bytes, unless --upload-clients says otherwise


def probe(target: Target, accept: Callable[[int], bool], timeout: float) -> None:
    """
    One GET before any load.

    @raise CheckError: why the target is unusable.
    """
    with connect_or_fail(target.host, target.port, timeout) as sock:
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


def runHTTP(args: argparse.Namespace) -> int:
    """
    Run C{txflip check --http}; the exit status.

    @raise CheckError: for bad input or an unusable target.
    """
    target = Target.fromURL(args.http)
    try:
        accept = expectStatus(args.expect_status or DEFAULT_STATUS)
    except ValueError as e:
        raise CheckError(f"--expect-status: {e}") from None
    uploads = args.upload_clients
    if uploads is None:
        uploads = UPLOAD_CLIENTS if args.post_bytes else 0
    if uploads and not args.post_bytes:
        raise CheckError("--upload-clients needs --post-bytes")
    clients = args.short_clients + args.long_clients + uploads
    if clients == 0:
        raise CheckError("nothing to do: no clients")
    if clients > 1000:
        raise CheckError("at most 1000 clients in all")
    upgradeOne = upgrader(args)
    probe(target, accept, args.io_timeout)
    load = HTTPLoad(
        target,
        accept=accept,
        short=args.short_clients,
        keepAlive=args.long_clients,
        uploads=uploads,
        postBytes=args.post_bytes,
        interval=args.interval,
        timeout=args.io_timeout,
    )
    run = run_load(
        load,
        upgrade_one=upgradeOne,
        duration=args.duration,
        upgrades=args.upgrades,
        progress=sys.stderr,
    )
    report = Report(
        str(target),
        run.seconds,
        {name: each.n_threads for name, each in load.clients.items()},
        load.groups,
        args.upgrades,
        run.upgrades,
        args.max_errors,
        stuck_threads=not run.stopped,
    )
    return show(report, args.json)
