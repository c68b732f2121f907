"""
systemd: readiness notifications and socket activation.

Notifications go to C{$NOTIFY_SOCKET} (a datagram socket; abstract when the address
starts with C{@}), one datagram per state change.  The sequence a unit sees:

  - first generation ready: C{MAINPID=<pid>}, C{READY=1};
  - upgrade begins (old generation): C{RELOADING=1}, C{MONOTONIC_USEC=<µs>};
  - new generation ready: C{MAINPID=<its pid>}, C{READY=1};
  - upgrade failed (old generation): C{READY=1} with a C{STATUS=} saying why;
  - upgrade refused at once (not ready, previous generation alive): C{RELOADING=1}
    and C{READY=1} in one message, with the reason;
  - graceful stop: C{STOPPING=1}.

Each message carries a C{STATUS=} in words.  An old generation that has handed over
sends nothing more: the unit's main process is its successor now.  This works for
C{Type=notify} and C{Type=notify-reload} units with C{NotifyAccess=all} (the new
generation is not the process systemd started).

Socket activation: a first generation started by systemd adopts the sockets it was
given (C{LISTEN_FDS}, C{LISTEN_PID}, C{LISTEN_FDNAMES}) for the C{--listen}
addresses that match them, and later generations inherit them like any other
listener.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

from twisted.logger import Logger

from txflip.listen._addresses import KINDS, ListenSpec
from txflip.listen._fds import Listener

if TYPE_CHECKING:
    from twisted.python.systemd import ListenFDs

_log = Logger()
_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def monotonicUsec() -> int:
    """
    C{CLOCK_MONOTONIC} in microseconds, as C{MONOTONIC_USEC=} wants it.
    """
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """
    Sends sd_notify messages, if systemd asked for them (C{$NOTIFY_SOCKET} set).

    Failing to notify is logged once and never stops the service: the unit's
    timeouts will tell the operator.
    """

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._warned = False

    @classmethod
    def fromEnvironment(
        cls, environ: MutableMapping[str, str] | None = None
    ) -> Notifier:
        return cls((os.environ if environ is None else environ).get("NOTIFY_SOCKET"))

    def notify(self, *fields: str) -> None:
        """
        Send C{fields} (C{"READY=1"}, C{"STATUS=..."}) as one datagram.
        """
        if not self.address:
            return
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]
        message = "\n".join(fields).encode("utf-8")
        try:
            with socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
            ) as s:
                s.connect(target)
                s.sendall(message)
        except OSError as e:
            if not self._warned:
                self._warned = True
                _log.warn(
                    "txflip: cannot notify systemd at {address}: {error}",
                    address=self.address,
                    error=e,
                )

    def ready(self, status: str) -> None:
        self.notify(f"MAINPID={os.getpid()}", "READY=1", f"STATUS={status}")

    def reloading(self, status: str) -> None:
        self.notify(
            "RELOADING=1", f"MONOTONIC_USEC={monotonicUsec()}", f"STATUS={status}"
        )

    def reloadRefused(self, status: str) -> None:
        self.notify(
            "RELOADING=1",
            f"MONOTONIC_USEC={monotonicUsec()}",
            "READY=1",
            f"STATUS={status}",
        )

    def stillReady(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.notify("STOPPING=1", f"STATUS={status}")


def _spec(sock: socket.socket) -> ListenSpec | None:
    name = sock.getsockname()
    stream = sock.type == socket.SOCK_STREAM
    if sock.family == socket.AF_UNIX:
        if not stream or not isinstance(name, str) or not name.startswith("/"):
            return None
        return ListenSpec("unix", path=name)
    for kind in KINDS:
        spec = ListenSpec(kind, host=name[0], port=name[1])
        if kind != "unix" and spec.family == sock.family and spec.stream == stream:
            return spec
    return None


def _endpointsFDs() -> ListenFDs:
    """
    What C{twisted.internet.endpoints} took from the environment when it was
    imported.  Only a private attribute holds it (C{_SystemdParser._sddaemon});
    if Twisted moved it, say so instead of silently ignoring socket activation.
    """
    from twisted.python.systemd import ListenFDs

    endpoints = sys.modules["twisted.internet.endpoints"]
    found = getattr(getattr(endpoints, "_SystemdParser", None), "_sddaemon", None)
    if not isinstance(found, ListenFDs):
        _log.critical(
            "txflip: cannot see the sockets systemd passed (LISTEN_FDS): this"
            " Twisted no longer keeps them in _SystemdParser._sddaemon; systemd"
            " sockets are ignored (import txflip before twisted.internet.endpoints)"
        )
        return ListenFDs([], ())
    return found


def listenFDs(
    environ: MutableMapping[str, str] | None = None,
) -> list[Listener]:
    """
    The sockets systemd passed to this process, as inherited listeners keyed by
    their real address; the variables are removed from the environment so that
    later generations don't misread them.

    Twisted's C{twisted.internet.endpoints} reads (and removes) the same variables
    when it is imported; if it was imported first, we ask it what it found.
    """
    if environ is None:
        environ = os.environ
    if "LISTEN_FDS" in environ:
        from twisted.python.systemd import ListenFDs

        found: ListenFDs | None = ListenFDs.fromEnvironment(environ)
    elif "twisted.internet.endpoints" in sys.modules:
        found = _endpointsFDs()
    else:
        # Not socket-activated (ListenFDs would find nothing): a start outside
        # systemd does without importing Twisted's systemd support.
        found = None
    for variable in _LISTEN_VARIABLES:
        environ.pop(variable, None)
    if found is None:
        return []
    listeners = []
    names = found.inheritedNamedDescriptors()
    nameOf = {fd: name for name, fd in names.items()}
    for index, fd in enumerate(found.inheritedDescriptors()):
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise OSError("not a socket")
            sock = socket.socket(fileno=fd)
        except OSError as e:
            _log.warn("txflip: ignoring systemd fd {fd}: {error}", fd=fd, error=e)
            continue
        spec = _spec(sock)
        if spec is None:
            _log.warn("txflip: ignoring systemd fd {fd}: unsupported socket", fd=fd)
            sock.detach()
            continue
        sock.setblocking(False)
        sock.set_inheritable(False)
        aliases: tuple[str, ...] = (f"index={index}",)
        if fd in nameOf:
            aliases += (f"name={nameOf[fd]}",)
        listeners.append(Listener(spec, spec, sock, True, aliases))
    return listeners
