"""
The preloading template: one fresh interpreter per generation of C{txflip run}
that imports the application, then forks the generation's workers, which share
its pages copy-on-write.

Run as C{txflip.run._template KIND TARGET NAME ARGV...} (see
L{txflip.run._runners.Runner}) with fd 3 a C{SOCK_SEQPACKET} socket to the
supervisor (L{txflip.run._preload}).  It says C{{"ready": PID}} once its imports
are done (or C{{"error": ...}} and exits), then serves fork requests: each carries
a worker's environment and, with C{SCM_RIGHTS}, its fds and the numbers to place
them at; the answer is the worker's pid, and later its exit status (we are its
parent: we reap it).  End of file on the socket: we are retired, and exit.

The reactor must not exist before the fork (one epoll set, one waker, shared by
every worker): a finder refuses to import C{twisted.internet.reactor} while we
prepare.  A plugin that imports it (twistd's own C{web} does) is then parsed in
the worker instead, after the modules it would need are preloaded; a module that
I{installs} a reactor without importing it is refused with one line, as is an
application that leaves a file open on import (a worker's fds take its number).

A forked worker leaves our loop by an exception (L{_Become}) caught in L{main},
and runs the application after it, near the top of the stack, the way a fresh
interpreter would: its C{SystemExit} and C{atexit} behave as they always do (the
template itself ends with C{os._exit}, without the application's handlers).
Imports here are the standard library's until the runner's: this module is what
the template is, and is kept small.
"""

from __future__ import annotations

import gc
import json
import os
import select
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

#: The socket to the supervisor.
SOCKET_FD = 3
#: Bigger than any request: a worker's environment and fd numbers.
MAX_MESSAGE = 1 << 20
MAX_FDS = 253
_REACTOR = "twisted.internet.reactor"
_MARKER = "TXFLIP_HANDOFF"
#: Preloaded when the runner itself cannot import the application here; each one
#: that would import the reactor is skipped.
WARM = (
    "twisted.internet.defer",
    "twisted.internet.protocol",
    "twisted.internet.endpoints",
    "twisted.internet.epollreactor",
    "twisted.internet.tcp",
    "twisted.application.service",
    "twisted.application.internet",
    "twisted.scripts.twistd",
    "twisted.web.server",
    "twisted.web.resource",
    "twisted.web.static",
    "twisted.web.wsgi",
    "twisted.web.script",  # with twcgi and demo: what twistd's web plugin imports
    "twisted.web.twcgi",  # but for the reactor (it is parsed in the worker)
    "twisted.web.demo",
    "twisted.application.strports",
    "txflip",
    "txflip.twistd",
    "txflip.echo",
)
#: What every worker of C{txflip run} imports as it starts, whatever it runs.
WORKER_SIDE = ("txflip.run._channel", "txflip.run._balance")
PR_SET_NAME = 15


class _ReactorImported(BaseException):
    """
    Something imported the reactor while we prepare: not an L{ImportError}, for
    no fallback to swallow; Twisted's plugin loader swallows all (and logs it,
    hence the message), so the guard records it too (L{_refused}).
    """


#: One entry each time the guard refused the reactor while we prepared.
_refused: list[str] = []


class _Guard:
    """
    A C{sys.meta_path} finder that refuses the reactor's module.
    """

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name == _REACTOR:
            _refused.append(name)
            raise _ReactorImported(
                "txflip run --preload: the reactor is not imported before the"
                " fork; this plugin is loaded in each worker instead"
            )


class _Become(BaseException):
    """
    Raised in a forked child: leave the template's loop and become a worker.
    """

    def __init__(self, request: dict[str, Any], fds: list[int]) -> None:
        super().__init__()
        self.request = request
        self.fds = fds


def _warm() -> None:
    for name in WARM:
        try:
            __import__(name)
        except (_ReactorImported, ImportError):
            pass


def _warmEndpointParsers() -> None:
    """
    Load every endpoint-parser plugin, as C{serverFromString} does in each
    worker for a prefix no built-in parser has (C{flip:}): once here, shared.
    Autobahn's, when installed, brings Autobahn, txaio and cffi, which parses C
    sources on import: tens of ms a worker.  One that would import the reactor,
    or fails, is left to the worker, which logs it as twistd would (here,
    C{getPlugins} would log it, and every worker would replay that log).
    """
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.plugin import getCache

    import twisted.plugins

    for dropin in getCache(twisted.plugins).values():
        for plugin in dropin.plugins:
            if IStreamServerEndpointStringParser in plugin.provided:
                try:
                    plugin.load()
                except (_ReactorImported, Exception):  # noqa: BLE001 - see above
                    pass


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


def prepare(kind: str, target: str, argv: list[str]) -> Callable[[], object]:
    """
    Import what C{kind} needs (not the reactor); what the worker runs after the
    fork.
    """
    sys.argv = list(argv)
    if kind == "twistd" and os.path.isfile(target) and not entryPoint(target):
        kind = "script"
    # Where the command would have found its own modules first.
    script = kind != "module" and os.path.isfile(target)
    sys.path[0] = os.path.dirname(os.path.realpath(target)) if script else os.getcwd()
    _warmEndpointParsers()  # once sys.path is the command's: its plugins too
    for name in WORKER_SIDE:
        __import__(name)
    if kind != "twistd":
        _warm()
        import runpy

        if kind == "module":
            return lambda: runpy.run_module(target, run_name="__main__", alter_sys=True)
        return lambda: runpy.run_path(target, run_name="__main__")
    from twisted.python import usage
    from twisted.scripts import twistd

    if any(a == "-r" or a.startswith("--reactor") for a in argv[1:]):
        _warm()  # twistd installs the reactor it is told of: parse in the worker
        return twistd.run
    # twistd re-exports its platform's ServerOptions: what twistd.run parses.
    config = twistd.ServerOptions()  # type: ignore[attr-defined]
    # Every worker is a txflip child: what the options read at parse time must
    # see it (the flip plugin keeps a child in the foreground).
    os.environ[_MARKER] = "{}"
    del _refused[:]
    try:
        config.parseOptions(argv[1:])
    except _ReactorImported:
        pass
    except usage.error as e:
        # A plugin whose module imports the reactor is dropped by Twisted's
        # loader ("Unknown command"): the worker parses, where it loads.
        if not _refused:
            raise SystemExit(f"{os.path.basename(argv[0])}: {e}") from None
    finally:
        del os.environ[_MARKER]
    if _refused:
        _warm()
        return twistd.run
    return lambda: twistd.runApp(config)


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


def serve(sock: socket.socket) -> None:
    """
    Fork workers on request and report their ends, until the supervisor closes
    its end.  In a child, raises L{_Become}.
    """
    children: dict[int, int] = {}  # pidfd: pid
    while True:
        readable, _, _ = select.select([sock.fileno(), *children], [], [])
        for fd in readable:
            if fd in children:
                pid = children.pop(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                _send(sock, {"exited": pid, "status": status})
                continue
            message, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
            if not message:
                return
            request = json.loads(message)
            try:
                if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(fds) != len(
                    request["fds"]
                ):
                    raise OSError(f"received {len(fds)} of {len(request['fds'])} fds")
                pid = _fork(request, fds)  # the child leaves here (_Become)
            except OSError as e:
                pid = 0
                _send(sock, {"forked": request["id"], "error": str(e)})
            for each in fds:
                os.close(each)
            if not pid:
                continue
            try:
                children[os.pidfd_open(pid)] = pid
            except ProcessLookupError:  # gone already: reap it now
                _, status = os.waitpid(pid, 0)
                _send(sock, {"forked": request["id"], "pid": pid})
                _send(sock, {"exited": pid, "status": status})
                continue
            _send(sock, {"forked": request["id"], "pid": pid})


def _fork(request: dict[str, Any], fds: list[int]) -> int:
    _flush()
    pid = os.fork()
    if pid == 0:
        raise _Become(request, list(fds))
    return pid


def become(request: dict[str, Any], fds: list[int], name: str) -> None:
    """
    In a fresh child: place its fds where its handoff table says, close every
    other, take its environment and name.
    """
    targets: list[int] = request["fds"]
    floor = max([*targets, *fds, SOCKET_FD]) + 1
    import fcntl

    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, floor) for fd in fds]
    for fd, target in zip(moved, targets, strict=True):
        os.dup2(fd, target)
    keep = sorted({0, 1, 2, *targets})
    start = 3
    for fd in keep:
        if fd >= start:
            os.closerange(start, fd)
            start = fd + 1
    os.closerange(start, os.sysconf("SC_OPEN_MAX"))
    os.environ.clear()
    os.environ.update(request["env"])
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Guard)]
    _setName(name)


def _setName(name: str) -> None:
    """
    Name the worker as exec would have (C{pgrep -x twistd} finds it).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main(args: Sequence[str]) -> int:
    kind, target, name, *argv = args
    sock = socket.socket(fileno=SOCKET_FD)
    guard = _Guard()
    sys.meta_path.insert(0, guard)
    try:
        run = prepare(kind, target, argv)
        why = unforkable()
        if why:
            raise SystemExit(
                f"{argv[0]}: the application {why}; use txflip run --no-preload"
            )
    except BaseException as e:  # noqa: BLE001 - told to the supervisor, then exit
        if isinstance(e, SystemExit) and isinstance(e.code, str):
            error = e.code
        elif isinstance(e, SystemExit):
            error = f"exited with status {e.code} while preloading"
        else:
            error = f"{type(e).__name__}: {e}"
            import traceback

            traceback.print_exc()
        _send(sock, {"error": error.splitlines()[-1] if error else type(e).__name__})
        _exit(1)
    # What we imported stays out of the collector's reach: a collection in a
    # worker would otherwise write to (and so copy) every page of it.
    gc.freeze()
    _send(sock, {"ready": os.getpid()})
    child: _Become | None = None
    try:
        serve(sock)
    except _Become as forked:
        child = forked
    if child is None:
        _exit(0)
    # A worker, out of the except block: as if nothing had come before.
    sock.detach()  # become() closes it; the object must not close it again
    become(child.request, child.fds, name)
    run()
    return 0


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or each worker would write it again, or nobody


def _exit(status: int) -> NoReturn:
    """
    The template ends without the exit handlers the application registered on
    import: they are its workers', who run them when they exit.
    """
    _flush()
    os._exit(status)


def unforkable() -> str | None:
    """
    Why what the application did on import cannot be forked, if it cannot: a
    reactor installed (one epoll set for every worker), or a file left open (a
    log, a database: a worker's fds take those numbers, or are closed).
    """
    if _REACTOR in sys.modules:
        return "installed the reactor on import; it cannot be forked"
    try:
        listed = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    except OSError:
        return None
    for fd in listed:
        if fd in (0, 1, 2, SOCKET_FD):
            continue
        try:
            os.fstat(fd)  # the listing's own fd is closed by now
        except OSError:
            continue
        return f"opened fd {fd} on import; a worker's fds take those numbers"
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
