"""
A Klein application behind a C{flip:} endpoint: the one change for graceful
upgrades is the C{flip:} prefix (keep-alive connections move, the rest drain).

    python examples/kleinapp.py [PORT] [PIDFILE]    # default 8073, klein.pid
    curl http://127.0.0.1:8073/
"""

from __future__ import annotations

import os
import sys

from klein import Klein
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.server import Site

import txflip

app = Klein()


@app.route("/")
def hello(request: object) -> str:
    return f"hello from pid {os.getpid()}\n"


def main(port: str = "8073", pidFile: str = "klein.pid") -> None:
    txflip.startLogging()
    description = f"flip:tcp:{port}:interface=127.0.0.1:pidfile={pidFile}"
    serverFromString(reactor, description).listen(Site(app.resource()))
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
