"""
The preloading template: one interpreter per generation of C{txflip run} that
imports the application, then forks the generation's workers, which share its
pages copy-on-write.

Run as C{txflip.run._template [warm-]zygote KIND TARGET NAME ARGV...} (see
L{txflip.run._runners.Runner}) with fd 3 a C{SOCK_SEQPACKET} socket to the
supervisor (L{txflip.run._preload}), it is first the zygote
(L{txflip.run._zygote}): it imports what every template would before the
application, says C{{"ready": PID}} (or C{{"error": ...}} and exits), then
serves fork requests: each carries a child's environment and, with
C{SCM_RIGHTS}, its fds and the numbers to place them at; the answer is the
child's pid, and later its exit status (we are its parent: we reap it).  End of
file on the socket: we are retired, and exit.  Each child is a template, with its
own socket as fd 3: it imports the application, says it is ready, and serves the
same requests for its generation's workers.

Nothing here imports the reactor before the fork (L{txflip.run._preimport}): a
plugin that imports it (twistd's own C{web} does) is parsed in the worker
instead, after the modules it would need are preloaded; a module that I{installs}
a reactor without importing it is refused with one line, as is an application
that leaves a file open on import (a worker's fds take its number).

A forked child leaves our loop by an exception (L{_Become}), and a worker runs
the application after it, near the top of the stack, the way a fresh
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
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from txflip.run._preimport import (
    REACTOR,
    Guard,
    ReactorImported,
    refused,
    searchPath,
    warm,
    warmFor,
    warmNamed,
)

#: The socket to the supervisor.
SOCKET_FD = 3
#: A template's pipe from its zygote, which forks it before it checks that what
#: it imported is still fresh: one byte, C{y}, says it is (L{awaitVerdict}).
VERDICT_FD = 4
#: Bigger than any request: a worker's environment and fd numbers.
MAX_MESSAGE = 1 << 20
MAX_FDS = 253
_MARKER = "TXFLIP_HANDOFF"
#: The first argument of a zygote that is kept (L{txflip.run._zygote}), and
#: imports L{txflip.run._preimport.WARM} for all its templates; C{zygote} forks
#: a single template.
WARM_ZYGOTE = "warm-zygote"
PR_SET_NAME = 15
#: Whether we are (or were forked from) a zygote, which warmed what we need.
_zygote = False


class _Become(BaseException):
    """
    Raised in a forked child: leave the template's loop and become a worker.
    """

    def __init__(self, request: dict[str, Any], fds: list[int]) -> None:
        super().__init__()
        self.request = request
        self.fds = fds


def prepare(
    kind: str, target: str, argv: list[str], parse: bool = True
) -> tuple[Callable[[], object], bool]:
    """
    Import what C{kind} needs (not the reactor); what the worker runs after the
    fork, and whether it parses twistd's options itself.

    @param parse: whether to try parsing twistd's options here; not if the last
        generation's template found its plugin imports the reactor: the try
        costs its time again (the worker parses anyway).
    """
    from txflip.run._runners import entryPoint

    sys.argv = list(argv)
    if kind == "twistd" and os.path.isfile(target) and not entryPoint(target):
        kind = "script"
    if not _zygote:
        warmFor(kind, target)
    if kind != "twistd":
        warm()
        import runpy

        if kind == "module":
            return (
                lambda: runpy.run_module(target, run_name="__main__", alter_sys=True)
            ), False
        return (lambda: runpy.run_path(target, run_name="__main__")), False
    from twisted.python import usage
    from twisted.scripts import twistd

    # twistd installs the reactor it is told of: parse in the worker.
    if not parse or any(a == "-r" or a.startswith("--reactor") for a in argv[1:]):
        return _parsedInWorker(argv)
    # twistd re-exports its platform's ServerOptions: what twistd.run parses.
    config = twistd.ServerOptions()  # type: ignore[attr-defined]
    # Every worker is a txflip child: what the options read at parse time must
    # see it (the flip plugin keeps a child in the foreground).
    os.environ[_MARKER] = "{}"
    del refused[:]
    try:
        config.parseOptions(argv[1:])
    except ReactorImported:
        pass
    except usage.error as e:
        # A plugin whose module imports the reactor is dropped by Twisted's
        # loader ("Unknown command"): the worker parses, where it loads.
        if not refused:
            raise SystemExit(f"{os.path.basename(argv[0])}: {e}") from None
    finally:
        del os.environ[_MARKER]
    if refused:
        return _parsedInWorker(argv)
    return (lambda: twistd.runApp(config)), False


def _parsedInWorker(argv: list[str]) -> tuple[Callable[[], object], bool]:
    """
    Leave twistd's options to the worker, with what they would import
    preloaded: Twisted, twisted.web, txflip, and the application C{web} names.
    """
    from twisted.scripts import twistd

    warm()
    warmNamed(argv)
    return twistd.run, True


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    """
    Tell the supervisor; if it closed its end, we are retired (one forked but
    never reported, its forker dead, learns it here): exit.
    """
    try:
        sock.send(json.dumps(message).encode())
    except OSError:
        _exit(0)


Check = Callable[[dict[str, Any]], str | None]


def serve(sock: socket.socket, stale: Check, check: Check | None = None) -> None:
    """
    Fork children on request (a template's workers, a zygote's templates) and
    report their ends, until the supervisor closes its end.  In a child, raises
    L{_Become}.  A request C{stale} or C{check} finds a reason to refuse is
    answered with it: the supervisor replaces us.

    C{check} is the slow part (a zygote stats every file it imported, about
    10 ms): it runs once the child is forked, while the child starts on its
    imports, instead of before; the child waits for our verdict on
    L{VERDICT_FD} before it says anything, and a stale one is killed unheard.
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
            try:
                message, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
            except ConnectionResetError:  # closed with our last reports unread
                return
            if not message:
                return
            request = json.loads(message)
            pid, go = 0, None
            try:
                if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(fds) != len(
                    request["fds"]
                ):
                    raise OSError(f"received {len(fds)} of {len(request['fds'])} fds")
                why = stale(request)
                if not why:  # a child leaves here: _Become
                    pid, go = _fork(request, fds, verdict=check is not None)
                if go is not None and check is not None:
                    why = check(request)
                if why:
                    _send(sock, {"forked": request["id"], "stale": why})
            except OSError as e:
                why = str(e)
                _send(sock, {"forked": request["id"], "error": why})
            for each in fds:
                os.close(each)
            if why:
                pid, go = _unfork(pid, go)
            if not pid:
                continue
            try:
                children[os.pidfd_open(pid)] = pid
            except ProcessLookupError:  # gone already: reap it now
                _, status = os.waitpid(pid, 0)
                _send(sock, {"forked": request["id"], "pid": pid})
                _send(sock, {"exited": pid, "status": status})
                _unfork(0, go)
                continue
            _send(sock, {"forked": request["id"], "pid": pid})
            if go is not None:  # after its pid: the supervisor knows it first
                _release(go)


def _fork(
    request: dict[str, Any], fds: list[int], verdict: bool = False
) -> tuple[int, int | None]:
    """
    Fork the child C{request} asks for; with a C{verdict}, it also has the
    reading end of a pipe at L{VERDICT_FD}, whose other end we return.
    """
    go = None
    if verdict:
        theirs, go = os.pipe()
        request = {**request, "fds": [*request["fds"], VERDICT_FD]}
        fds = [*fds, theirs]
    _flush()
    try:
        pid = os.fork()
    except OSError:
        if go is not None:
            os.close(fds[-1])
        _unfork(0, go)
        raise
    if pid == 0:
        raise _Become(request, list(fds))
    if go is not None:
        os.close(fds[-1])  # the child has its copy
    return pid, go


def _unfork(pid: int, go: int | None) -> tuple[int, None]:
    """
    Kill and reap C{pid}, forked before a check that found us stale (it has
    said nothing yet: it waits for a verdict that never comes), and close its
    pipe.
    """
    if pid:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if go is not None:
        os.close(go)
    return 0, None


def _release(go: int) -> None:
    """
    Tell a child forked before its check that we are fresh.  One that died
    meanwhile (its import crashed) reads nothing: its pidfd reports its end.
    """
    try:
        os.write(go, b"y")
    except BrokenPipeError:
        pass
    finally:
        os.close(go)


def awaitVerdict() -> None:
    """
    In a template: wait until the zygote that forked us has checked that what
    it imported is still fresh, before saying anything (an error included: a
    stale module may be its cause).  A stale zygote kills us instead.
    """
    try:
        said = os.read(VERDICT_FD, 1)
    finally:
        os.close(VERDICT_FD)
    if said != b"y":
        raise SystemExit("the preloading zygote exited before its freshness check")


def become(request: dict[str, Any], fds: list[int], name: str | None) -> None:
    """
    In a fresh child: place its fds where its handoff table says, close every
    other, take its environment, directory and (a worker) name.
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
    if "cwd" in request:
        os.chdir(request["cwd"])
    if name is not None:
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
    role, kind, target, name, *argv = args
    sock = socket.socket(fileno=SOCKET_FD)
    sys.meta_path.insert(0, Guard())
    template = _zygoteOf(sock, kind, target, argv[0], role == WARM_ZYGOTE)
    sock.detach()  # become() closes it
    become(template.request, template.fds, None)
    sock = socket.socket(fileno=SOCKET_FD)  # now the template's own
    parse = template.request.get("parse", True)
    run: list[Callable[[], object]] = []

    def prepareTemplate() -> dict[str, Any]:
        try:
            work, parsesInWorker = prepare(kind, target, argv, parse)
        finally:
            awaitVerdict()
        run.append(work)
        return {"parsesInWorker": parsesInWorker}

    worker = _forkServer(
        sock, prepareTemplate, f"{argv[0]}: the application", lambda request: None
    )
    # A worker, out of the except block: as if nothing had come before.
    sock.detach()
    become(worker.request, worker.fds, name)
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, Guard)]
    run[0]()
    return 0


def _zygoteOf(
    sock: socket.socket, kind: str, target: str, program: str, kept: bool
) -> _Become:
    """
    Be the zygote (L{txflip.run._zygote}): import what every template would,
    then fork templates while that is still what a fresh interpreter would
    import; return in each template.
    """
    from txflip.run._zygote import SINCE, Stamps, changed, fingerprint, settled

    global _zygote
    _zygote = True
    stamps = Stamps()
    since = int(os.environ.pop(SINCE, "0"))

    def prepare() -> dict[str, Any]:
        nonlocal stamps
        warmFor(kind, target)
        if kept:
            warm()
        stamps = fingerprint()
        return {"settled": settled(stamps, since)}

    def stale(request: dict[str, Any]) -> str | None:
        try:
            os.chdir(request.get("cwd", os.curdir))
        except OSError as e:
            return f"cannot enter the command's directory: {e}"
        if not request.get("check", True):  # our first: we have just imported
            return None
        if searchPath(kind, target) != sys.path[0]:
            return f"{sys.path[0]} is not where the command's modules are now"
        env = {k: v for k, v in request["env"].items() if k.startswith("PYTHON")}
        if env != {k: v for k, v in os.environ.items() if k.startswith("PYTHON")}:
            return "the interpreter's PYTHON* environment changed"
        return None

    def check(request: dict[str, Any]) -> str | None:
        if not request.get("check", True):
            return None
        path = changed(stamps)
        return f"{path} changed" if path else None

    return _forkServer(sock, prepare, f"{program}: preloading", stale, check)


def _forkServer(
    sock: socket.socket,
    prepare: Callable[[], dict[str, Any]],
    what: str,
    stale: Check,
    check: Check | None = None,
) -> _Become:
    """
    Prepare (or tell the supervisor why we cannot, and exit), then serve fork
    requests until retired (then exit): return in each forked child.
    """
    try:
        said = prepare()
        why = unforkable()
        if why:
            raise SystemExit(f"{what} {why}; use txflip run --no-preload")
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
    # child would otherwise write to (and so copy) every page of it.
    gc.freeze()
    _send(sock, {"ready": os.getpid(), **said})
    try:
        serve(sock, stale, check)
    except _Become as forked:
        return forked
    _exit(0)


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
    if REACTOR in sys.modules:
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
