"""
Which worker commands C{txflip run} can preload (L{txflip.run._preload}), and how.

A preloading zygote and its templates are the command's own interpreter running
L{txflip.run._template}, so the command must be a Python program started in a
way the template can reproduce after its fork.  Three are known:

  - C{twistd}: the script (C{venv/bin/twistd}, C{python /path/twistd}) or
    C{python -m twisted.scripts.twistd}: the template parses twistd's options,
    which imports the plugin (and, for most plugins, the application);
  - C{python -m MODULE}: the template imports Twisted and txflip, the worker runs
    the module;
  - C{python SCRIPT} (or a C{#!} script of a Python interpreter): likewise.

Anything else (a shell wrapper, C{python -c}, an interpreter option we do not
know) is started with exec, as without preloading: L{preloadable} says why.
Standard library only: the supervisor asks before it imports Twisted's reactor.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass

from txflip.generation._command import Command

#: Interpreter options that change nothing the template must reproduce beyond
#: passing them on to it.
_FLAGS = frozenset({"-u", "-B", "-O", "-OO", "-s", "-E"})
_PYTHON = re.compile(r"python[0-9.]*\Z")
_TWISTD_MODULE = "twisted.scripts.twistd"
#: How a zygote starts: C{python -c BOOTSTRAP TXFLIP_PATH ROLE KIND ...}.  The
#: command's interpreter may find txflip only as its program does (a script that
#: extends C{sys.path} itself): the supervisor's own txflip is then the last
#: resort, never ahead of the application's.
BOOTSTRAP = (
    "import runpy, sys; sys.path.append(sys.argv.pop(1));"
    " runpy.run_module('txflip.run._template', run_name='__main__', alter_sys=True)"
)


@dataclass(frozen=True)
class Runner:
    """
    How a template runs a worker command.
    """

    #: The command's interpreter, and the options it was given.
    interpreter: str
    flags: tuple[str, ...]
    #: C{twistd}, C{module} or C{script}.
    kind: str
    #: The module's name, or the script's path.
    target: str
    #: The worker's C{sys.argv}.
    argv: tuple[str, ...]
    #: The worker's process name (C{/proc/PID/comm}), as exec would have set it.
    name: str

    def zygoteArgs(self, warm: bool) -> list[str]:
        """
        The command line (argv, the interpreter first) of a zygote
        (L{txflip.run._zygote}), which forks the templates, and imports every
        module a template may need up front if it is to be kept (C{warm}).
        """
        return [
            self.interpreter,
            *self.flags,
            "-c",
            BOOTSTRAP,
            os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
            "warm-zygote" if warm else "zygote",
            self.kind,
            self.target,
            self.name,
            *self.argv,
        ]


#: The statements of an installer's entry-point script for twistd (pip,
#: setuptools): running it is running C{twisted.scripts.twistd.run}.
_ENTRY_POINT = frozenset(
    {
        "import re",
        "import sys",
        "from twisted.scripts.twistd import run",
        "if __name__ == '__main__':",
        'if __name__ == "__main__":',
        "sys.exit(run())",
    }
)


def entryPoint(path: str) -> bool:
    """
    Whether script C{path} is twistd's entry point and nothing else: anything
    else (a script that extends C{sys.path}, or one that is not twistd at all
    any more) is run as it is, in the worker.  Read by each template: the
    script may change between generations.
    """
    try:
        with open(path) as f:
            text = f.read(4096)
    except (OSError, ValueError):
        return False
    lines = [line.strip() for line in text.splitlines()]
    statements = [line for line in lines if line and not line.startswith("#")]
    return "from twisted.scripts.twistd import run" in statements and all(
        line in _ENTRY_POINT or line.startswith("sys.argv[0] = re.sub(")
        for line in statements
    )


def preloadable(command: Command) -> Runner | str:
    """
    How to preload C{command}, or why it cannot be.
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        return "preloading needs Linux (pidfds)"
    executable, args = command.executable, command.args
    name = os.path.basename(executable)[:15]
    if _PYTHON.match(os.path.basename(executable)):
        return _python(executable, (), list(args[1:]), name)
    interpreter = _shebang(executable)
    if interpreter is None:
        return f"{os.path.basename(executable)} is not a Python program"
    python, flags = interpreter
    return _script(python, flags, executable, list(args[1:]), name)


def _python(
    python: str, flags: tuple[str, ...], rest: list[str], name: str
) -> Runner | str:
    while rest and rest[0].startswith("-") and rest[0] != "-":
        option = rest.pop(0)
        if option == "-m" and rest:
            module = rest.pop(0)
            kind = "twistd" if module == _TWISTD_MODULE else "module"
            return Runner(python, flags, kind, module, (module, *rest), name)
        if option not in _FLAGS:
            return f"the interpreter option {option} is not supported"
        flags = (*flags, option)
    if not rest or not os.path.isfile(rest[0]):
        return "no Python script or module to run"
    return _script(python, flags, rest[0], rest[1:], name)


def _script(
    python: str, flags: tuple[str, ...], script: str, rest: list[str], name: str
) -> Runner:
    kind = "twistd" if os.path.basename(script) == "twistd" else "script"
    return Runner(python, flags, kind, script, (script, *rest), name)


def _shebang(path: str) -> tuple[str, tuple[str, ...]] | None:
    """
    The Python interpreter (and its option) of script C{path}'s C{#!} line.
    """
    try:
        with open(path, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    if words and os.path.basename(words[0]) == "env" and len(words) > 1:
        found = shutil.which(words[1])
        words = [found, *words[2:]] if found else []
    if not words or not _PYTHON.match(os.path.basename(words[0])):
        return None
    flags = tuple(words[1:])
    if not set(flags) <= _FLAGS:
        return None
    return words[0], flags
