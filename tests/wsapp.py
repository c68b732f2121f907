"""
twisted.web with Autobahn's WebSocketResource behind a C{flip:} endpoint: C{/ws}
echoes every message, C{/} answers C{hello}.  Autobahn takes the connection over
from twisted.web on upgrade (it swaps the transport's protocol).  With C{direct},
Autobahn's WebSocketServerFactory itself is served, with no twisted.web.  With
C{stay}, the protocol provides txflip's IDrainable itself and never ends: a
WebSocket that outlives the drain.

Usage: wsapp.py DESCRIPTION [direct|stay]
"""

import sys

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data
from zope.interface import implementer

from txflip import IDrainable


class Echo(WebSocketServerProtocol):
    def onMessage(self, payload, isBinary) -> None:
        self.sendMessage(payload, isBinary)


@implementer(IDrainable)
class Stay(Echo):
    def startDraining(self) -> None:
        pass

    def closeIfIdle(self) -> None:
        pass


globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
factory = WebSocketServerFactory()
factory.protocol = Stay if sys.argv[2:] == ["stay"] else Echo
if sys.argv[2:] == ["direct"]:
    serverFromString(reactor, sys.argv[1]).listen(factory)
else:
    root = Resource()
    root.putChild(b"", Data(b"hello\n", "text/plain"))
    root.putChild(b"ws", WebSocketResource(factory))
    serverFromString(reactor, sys.argv[1]).listen(Site(root))
reactor.run()
