"""
twisted.web behind a C{flip:} endpoint, for HTTP/2 and streaming tests: C{/} and
C{/small.txt} answer a line, C{/events} is a server-sent-events stream (one event
every 50 ms, its data the serving pid) that ends at an event boundary, with a
C{retry:} hint, when txflip says its connection drains.  C{/pid} answers the
serving pid, C{/slow} answers it after 1.5 s, C{/wait} after 0.3 s.  A C{PUT} or
C{POST} to C{/upload} answers the serving pid, the body's sha256 and its length
(uploads that move mid-body).  With C{no-h2-drain}, txflip's
HTTP/2 drain is switched off (as before it existed: bench/websocket.py).

Usage: streamapp.py DESCRIPTION [no-h2-drain]
"""

import hashlib
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.static import Data

import txflip


class Events(Resource):
    """
    The README's server-sent-events resource.
    """

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        count = 0

        def event():
            nonlocal count
            count += 1
            request.write(b"id: %d\ndata: %d\n\n" % (count, os.getpid()))

        ticking = LoopingCall(event)
        ticking.start(0.05)
        draining = txflip.whenDraining(request)

        def restart(_):
            # Between two events: tell EventSource to reconnect in 50 ms.
            ticking.stop()
            request.write(b"retry: 50\n\n")
            request.finish()

        draining.addCallback(restart)
        draining.addErrback(lambda failure: failure.trap(CancelledError))

        def finished(_):
            if ticking.running:
                ticking.stop()
            draining.cancel()

        request.notifyFinish().addBoth(finished)
        return NOT_DONE_YET


class Slow(Resource):
    isLeaf = True

    def __init__(self, delay):
        super().__init__()
        self.delay = delay

    def render_GET(self, request):
        def answer():
            request.write(b"%d\n" % os.getpid())
            request.finish()

        reactor.callLater(self.delay, answer)
        return NOT_DONE_YET


class Upload(Resource):
    isLeaf = True

    def render_PUT(self, request):
        body = request.content.read()
        digest = hashlib.sha256(body).hexdigest().encode()
        return b"%d %s %d\n" % (os.getpid(), digest, len(body))

    render_POST = render_PUT


if sys.argv[2:] == ["no-h2-drain"]:
    from txflip.protocols._h2 import DrainH2Connection

    DrainH2Connection.startDraining = lambda self: None  # type: ignore[method-assign]

globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
root = Resource()
root.putChild(b"", Data(b"hello\n", "text/plain"))
root.putChild(b"small.txt", Data(b"small\n", "text/plain"))
root.putChild(b"events", Events())
root.putChild(b"slow", Slow(1.5))
root.putChild(b"wait", Slow(0.3))
root.putChild(b"upload", Upload())
root.putChild(b"pid", Data(b"%d\n" % os.getpid(), "text/plain"))
serverFromString(reactor, sys.argv[1]).listen(Site(root))
reactor.run()
