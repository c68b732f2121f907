"""
The tutorial's starting point: a plain twisted.web server, knowing nothing of
txflip.  Run it with C{python hello.py}; stop it with Ctrl-C.
"""

import os
import sys

from twisted.internet import endpoints, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

#: Edit this, then upgrade, to see which code answers.
VERSION = 1


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return f"hello from version {VERSION}, pid {os.getpid()}\n".encode()


def main(listen: str = "tcp:8080:interface=127.0.0.1") -> None:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    endpoint = endpoints.serverFromString(reactor, listen)
    endpoint.listen(Site(Hello()))
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
