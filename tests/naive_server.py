"""
A deliberately naive "upgradable" line echo server, for proving that
``txflip check`` sees downtime.

``python naive_server.py PORT PIDFILE`` runs a wrapper that starts the server
(this file with ``--serve``) and, whenever it dies of ``SIGHUP``, starts a new
one: the restart most services do.  The server installs no ``SIGHUP`` handler,
so a ``SIGHUP`` kills it on the spot; its listening socket and every open
connection die with it, and nothing listens until the next one has started.
``python naive_server.py --restart COMMAND...`` wraps any other server that
SIGHUP kills (a plain ``twistd web``) the same way; the benchmarks' naive upgrade
is ``--restart --forever COMMAND...`` (no lifetime limit: a benchmark ends it).

Stdlib only, one thread, ``SO_REUSEADDR``; the pid file names the serving
process (written atomically once it listens).  Both processes die after
``LIFETIME`` seconds, so a broken test cannot leave them behind for long.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys

LIFETIME = 120  # seconds


def serve(port: int, pidfile: str) -> None:
    signal.alarm(LIFETIME)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    listener.setblocking(False)
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(pidfile + ".tmp", pidfile)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    pending: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                conn.setblocking(True)
                pending[conn] = b""
                selector.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                del pending[sock]
                sock.close()
                continue
            buffered = pending[sock] + data
            end = buffered.rfind(b"\n") + 1
            pending[sock] = buffered[end:]
            if end:
                try:
                    sock.sendall(buffered[:end])
                except OSError:
                    pass


def wrap(command: list[str], lifetime: int = LIFETIME) -> int:
    signal.alarm(lifetime)
    running: list[subprocess.Popen[bytes]] = []

    def terminate(signum: int, frame: object) -> None:
        for child in running:
            child.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, terminate)
    while True:
        running[:] = [subprocess.Popen(command)]
        status = running[0].wait()
        if status != -signal.SIGHUP:
            return status or 1


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1:3] == ["--restart", "--forever"]:
        sys.exit(wrap(sys.argv[3:], lifetime=0))
    elif sys.argv[1] == "--restart":
        sys.exit(wrap(sys.argv[2:]))
    else:
        sys.exit(wrap([sys.executable, __file__, "--serve", *sys.argv[1:3]]))
