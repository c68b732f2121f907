"""
flipecho, except that each line is answered with the serving process's pid: for
the picture of one upgrade (plot_upgrade.py), which colours every connection by
the process that served it.

    python bench/pidecho.py PORT PIDFILE

txflip used as a library, as in the README (UpgradeService, no twistd).
"""

from __future__ import annotations

import os
import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from txflip import IDrainable, Upgrader, UpgradeService

REPLY = b"%d\n" % os.getpid()


@implementer(IDrainable)
class PidEcho(Protocol):
    draining = False
    _pending = b""

    def dataReceived(self, data: bytes) -> None:
        pending = self._pending + data
        lines = pending.count(b"\n")
        self._pending = pending[pending.rfind(b"\n") + 1 :]
        assert self.transport is not None  # connected: it has data
        if lines:
            self.transport.write(REPLY * lines)
        if self.draining and lines and not self._pending:
            self.transport.loseConnection()

    def startDraining(self) -> None:
        self.draining = True

    def closeIfIdle(self) -> None:
        assert self.transport is not None  # only connections are drained
        if not self._pending:
            self.transport.loseConnection()


def main() -> None:
    port, pidfile = int(sys.argv[1]), sys.argv[2]
    service = UpgradeService(Upgrader(pidFile=pidfile))
    service.listen(f"tcp:{port}:interface=127.0.0.1", Factory.forProtocol(PidEcho))
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
