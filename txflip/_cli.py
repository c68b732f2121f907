"""
The C{txflip} command: one entry point, one module per subcommand.

Each subcommand module provides C{register(subparsers)}, which adds its parser and
sets C{func} to a callable taking the parsed arguments and returning the exit status.
Errors a user can cause are reported as one line on stderr with a non-zero status.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from txflip._settings import EXPECTED, SettingError, seconds


def argNumber(
    kind: Callable[[str], Any], low: float, what: str, high: float = math.inf
) -> Callable[[str], Any]:
    """
    An argparse type: C{kind(text)}, at least C{low}, finite (every run must end)
    and below C{high} if given.
    """

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not (low <= value < math.inf and value <= high):
            raise argparse.ArgumentTypeError(f"{what}, not {text!r}")
        return value

    return parse


def argSeconds(text: str) -> float:
    """
    An argparse type: every duration the txflip command takes (checked as every
    other entry point checks them, L{txflip._settings.seconds}).
    """
    try:
        return seconds("duration", text)
    except SettingError:
        raise argparse.ArgumentTypeError(f"expected {EXPECTED}, not {text!r}") from None


#: Subcommand modules, in the order C{--help} lists them.
SUBCOMMANDS = ("txflip.run._cli", "txflip.control._client", "txflip.check._cli")


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
