"""
What C{txflip run}'s supervisor keeps out, decided before C{import txflip} imports
Twisted.

The supervisor lives as long as the service and never speaks TLS, yet two imports
would bring TLS in: Twisted's Deferreds import asyncio, which imports C{ssl} (and
with it libssl and libcrypto) if it can, and Twisted's TCP support imports
pyOpenSSL and cryptography (about 12 MiB) if it can.  Both take an C{ImportError}
as "no TLS here", so a C{None} in C{sys.modules} keeps each out.  Deferreds are
imported by the package's own C{__init__}, before any code of C{txflip run} runs:
so the package imports this module first, which decides from the command line
alone (L{keepsTLSOut}).  The workers, separate programs, are not affected.  Nor is a
supervisor with C{--admin}: its metrics use C{prometheus_client}, which needs
C{ssl}, and so does the C{urllib.request} that Twisted imports on the way (it
leaves out its HTTPS support for good if C{ssl} is missing as it is imported).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

#: Left out of the supervisor; each of their importers copes without them.
TLS = ("ssl", "OpenSSL")


def keepsTLSOut(argv: Sequence[str], origArgv: Sequence[str]) -> bool:
    """
    Whether this process is a supervisor that keeps TLS out: C{txflip run}'s
    (started as the C{txflip} script or as C{python -m txflip}, with C{run} as
    its subcommand) without C{--admin}.

    @param argv: C{sys.argv} (while C{-m} locates its module, C{argv[0]} is
        C{"-m"}; then C{origArgv} says which module).
    @param origArgv: C{sys.orig_argv}, the interpreter's own command line.
    """
    if argv[1:2] != ["run"]:
        return False
    options = argv[2 : argv.index("--")] if "--" in argv else argv[2:]
    if any(each.startswith("--a") for each in options):
        # --admin, or a prefix argparse accepts for it; with no "--", perhaps an
        # argument of the command: then only this saving is lost.
        return False
    if argv[0] == "-m":
        # The module follows the first -m (options before it are the
        # interpreter's); "txflip.check" or any other module is not the command.
        given = list(origArgv)
        return "-m" in given and given[given.index("-m") + 1 :][:1] == ["txflip"]
    return os.path.basename(argv[0]) == "txflip"


def keepOut(names: Sequence[str] = TLS) -> None:
    """
    Keep C{names} out of this process: their import raises C{ImportError}.  One
    imported already stays.
    """
    for name in names:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def keepOutOfSupervisor() -> None:
    """
    In the supervisor, keep L{TLS} out.
    """
    if keepsTLSOut(sys.argv, getattr(sys, "orig_argv", ())):
        keepOut()


# Imported first by txflip/__init__, ahead of anything that imports Twisted.
keepOutOfSupervisor()
