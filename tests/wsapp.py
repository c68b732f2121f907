"""
twisted.web with Autobahn's WebSocketResource behind a C{flip:} endpoint: C{/ws}
echoes every message, C{/} answers C{hello}.  Autobahn takes the connection over
from twisted.web on upgrade (it swaps the transport's protocol).  With C{direct},
Autobahn's WebSocketServerFactory itself is served, with no twisted.web.  With
C{stay}, the protocol provides txflip's IDrainable itself and never ends: a
WebSocket that outlives the drain.  With C{move}, the protocol opts in to moving
(txflip's IMovable, for a per-connection counter) and echoes
C{"NICK COUNT PID MESSAGE"} (C{NICK}: the C{nick} query parameter of the
handshake).  With C{deflate}, it accepts permessage-deflate if a client
offers it (Autobahn's default is to decline).

Usage: wsapp.py DESCRIPTION [direct] [stay|move] [deflate]
"""

import os
import sys

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data
from zope.interface import implementer

from txflip import ConnectionState, IDrainable, IMovable


class Echo(WebSocketServerProtocol):
    def onMessage(self, payload, isBinary) -> None:
        self.sendMessage(payload, isBinary)


@implementer(IDrainable)
class Stay(Echo):
    def startDraining(self) -> None:
        pass

    def closeIfIdle(self) -> None:
        pass


@implementer(IMovable)
class Movable(Echo):
    count = 0

    def onMessage(self, payload, isBinary) -> None:
        self.count += 1
        nick = self.http_request_params.get("nick", ["-"])[0]
        head = f"{nick} {self.count} {os.getpid()} ".encode()
        self.sendMessage(head + payload, isBinary)

    def exportState(self) -> ConnectionState:
        return ConnectionState(1, b"%d" % self.count)

    def importState(self, state: ConnectionState) -> None:
        self.count = int(state.data)


def acceptDeflate(offers):
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


modes = set(sys.argv[2:])
globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
factory = WebSocketServerFactory()
factory.protocol = Stay if "stay" in modes else Movable if "move" in modes else Echo
if "deflate" in modes:
    factory.setProtocolOptions(perMessageCompressionAccept=acceptDeflate)
if "direct" in modes:
    serverFromString(reactor, sys.argv[1]).listen(factory)
else:
    root = Resource()
    root.putChild(b"", Data(b"hello\n", "text/plain"))
    root.putChild(b"ws", WebSocketResource(factory))
    serverFromString(reactor, sys.argv[1]).listen(Site(root))
reactor.run()
