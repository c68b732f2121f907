"""
An upgradable twistd plugin of your own: each line is answered with its number on
this connection, and the count moves with the connection on upgrade.

    PYTHONPATH=examples/twistd twistd -n linecount --port 8074
    kill -HUP $(cat twistd.pid)

Its C{Options} derive from C{txflip.twistd.UpgradeOptions} (twistd's pid file,
daemonizing and logging adapted; C{--upgrade-timeout}, C{--drain-timeout},
C{--idle-grace}), and C{makeService} builds the service with
C{txflip.twistd.makeUpgradeService}.
"""

from __future__ import annotations

from twisted.application.service import IService
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

import txflip
from txflip.twistd import UpgradeOptions, makeUpgradeService, rootService


@implementer(txflip.IMovable)
class LineCount(LineReceiver):
    count = 0

    def lineReceived(self, line: bytes) -> None:
        self.count += 1
        self.sendLine(b"%d %s" % (self.count, line))

    def exportState(self) -> txflip.ConnectionState:
        return txflip.ConnectionState(1, b"%d" % self.count)

    def importState(self, state: txflip.ConnectionState) -> None:
        if state.version != 1:
            raise txflip.StateRefused(f"unknown state {state.version}")
        self.count = int(state.data)


class Options(UpgradeOptions):
    optParameters = [["port", "p", "8074", "TCP port on 127.0.0.1"]]


def makeService(options: Options) -> IService:
    service = makeUpgradeService(options)
    description = f"tcp:{options['port']}:interface=127.0.0.1"
    service.listen(description, Factory.forProtocol(LineCount))
    return rootService(options, service)
