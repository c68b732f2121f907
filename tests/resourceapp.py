"""
A plain twisted.web Resource application that upgrades with txflip, for
C{txflip check --http}.

Usage::

    resourceapp.py flip DESCRIPTION        # behind a flip: endpoint (serverFromString)
    resourceapp.py library PIDFILE CONTROL  # UpgradeService + a control socket

C{GET /} answers C{hello}; C{POST /} answers the number of body bytes received.
With C{WEBAPP_FAIL_FIRST=SECONDS} in its environment, every generation after the
first answers 500 for its first SECONDS: a new version that is "ready" before its
application is (the bug a check must catch).  With C{WEBAPP_BROKEN_LATER=1}, every
generation after the first exits with status 3 at once: a new version that fails
to start.
"""

import os
import sys
import time

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Site

from txflip import Upgrader, UpgradeService

STARTED = time.monotonic()
LATER_GENERATION = "TXFLIP_HANDOFF" in os.environ
FAIL_FIRST = float(os.environ.get("WEBAPP_FAIL_FIRST", "0"))
if LATER_GENERATION and os.environ.get("WEBAPP_BROKEN_LATER"):
    sys.exit(3)


class Hello(Resource):
    isLeaf = True

    def _failing(self, request) -> bool:
        if LATER_GENERATION and time.monotonic() - STARTED < FAIL_FIRST:
            request.setResponseCode(500)
            return True
        return False

    def render_GET(self, request) -> bytes:
        return b"warming up\n" if self._failing(request) else b"hello\n"

    def render_POST(self, request) -> bytes:
        if self._failing(request):
            return b"warming up\n"
        return b"%d\n" % len(request.content.read())


globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
site = Site(Hello())
if sys.argv[1] == "flip":
    serverFromString(reactor, sys.argv[2]).listen(site)
else:
    service = UpgradeService(Upgrader(pidFile=sys.argv[2]))
    service.listen("tcp:0:interface=127.0.0.1", site)
    service.listenControl(sys.argv[3])
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
reactor.run()
