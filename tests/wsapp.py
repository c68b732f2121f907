"""
twisted.web with Autobahn's WebSocketResource behind a C{flip:} endpoint: C{/ws}
echoes every message, C{/} answers C{hello}.  Autobahn takes the connection over
from twisted.web on upgrade (it swaps the transport's protocol).

Usage: wsapp.py DESCRIPTION
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


class Echo(WebSocketServerProtocol):
    def onMessage(self, payload, isBinary) -> None:
        self.sendMessage(payload, isBinary)


globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
root = Resource()
root.putChild(b"", Data(b"hello\n", "text/plain"))
factory = WebSocketServerFactory()
factory.protocol = Echo
root.putChild(b"ws", WebSocketResource(factory))
serverFromString(reactor, sys.argv[1]).listen(Site(root))
reactor.run()
