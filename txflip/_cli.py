"""
The C{txflip} command: one entry point, one module per subcommand.

Each subcommand module provides C{register(subparsers)}, which adds its parser and
sets C{func} to a callable taking the parsed arguments and returning the exit status.
Errors a user can cause are reported as one line on stderr with a non-zero status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Subcommand modules, in the order C{--help} lists them.
SUBCOMMANDS = ("txflip._controlcli", "txflip._check")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="txflip",
        description="Zero-downtime upgrades for Twisted servers: tools for operators.",
    )
    subparsers = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(subparsers)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        print("txflip: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
