"""
What starts a generation: the executable, its argv and its working directory.

Every generation runs the command line the first one was started with, so that
a successful upgrade replaces all code and configuration and every generation
has the same name in C{ps}.
"""

from __future__ import annotations

import os
import sys
from typing import NamedTuple


class Command(NamedTuple):
    """
    How to start a generation: executable, argv, working directory.
    """

    executable: str
    args: tuple[str, ...]
    cwd: str
    #: Variables added to the child's environment.
    extraEnv: tuple[tuple[str, str], ...] = ()

    @classmethod
    def current(cls, cwd: str | None = None) -> Command:
        """
        This process's own command line, as it was started: a script the kernel
        ran through its C{#!} line (C{twistd -n flipecho}) is executed again, so
        that every generation has the same name in C{ps} and C{pgrep -x twistd};
        otherwise the interpreter with its full original command line
        (C{python3 -m app}, C{python3 /path/twistd ...}).
        """
        args = tuple(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
        script = _scriptIndex(args)
        if script is not None:
            return cls(args[script], args[script:], cwd or os.getcwd())
        return cls(sys.executable, args, cwd or os.getcwd())


def _scriptIndex(args: tuple[str, ...]) -> int | None:
    """
    Where the script stands in the interpreter's command line C{args} when the
    kernel started it through its C{#!} line: the process is then named after the
    script (C{/proc/self/comm}), not the interpreter.  After the interpreter comes
    the script, or one argument of the C{#!} line and then the script.
    """
    try:
        with open("/proc/self/comm") as f:
            name = f.read().strip()
    except OSError:
        return None
    if not name or os.path.basename(args[0])[:15] == name:
        return None
    for index in (1, 2):
        if index < len(args) and os.path.basename(args[index])[:15] == name:
            path = args[index]
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return index
    return None
