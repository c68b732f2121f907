"""
flipecho's Echo with every connection draining from the start, so that each is
closed with its first reply: for tests/test_cork.py and bench/close_segments.py.

Usage: drainingecho.py PORT [nocork]   (nocork: the same code, uncorked)
"""

import sys

from twisted.internet import reactor
from twisted.internet.protocol import ServerFactory

import txflip.drain._cork
from txflip.echo import Echo

if sys.argv[2:] == ["nocork"]:
    txflip.drain._cork.CORK = None


class Draining(ServerFactory):
    protocol = Echo

    def buildProtocol(self, addr: object) -> Echo:
        echo = Echo()
        echo.factory = self
        echo.startDraining()
        return echo


reactor.listenTCP(int(sys.argv[1]), Draining(), interface="127.0.0.1")
reactor.run()
