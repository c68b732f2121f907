"""
The tiny twisted.web application of C{bench.workers}: one 100-byte text/plain
answer to every GET, saying which worker answered (a copy of the peers harness's
C{peerstw.Hello}, C{../shared/peers-http/app}).

    twistd -n flip web --listen flip:tcp:8080 --class bench.hello.Hello
"""

from __future__ import annotations

import itertools
import os

from twisted.web.resource import Resource
from twisted.web.server import Request

SIZE = 100
_count = itertools.count(1)


def body() -> bytes:
    text = f"hello from pid {os.getpid()} request {next(_count)}"
    return (text.ljust(SIZE - 1) + "\n").encode("ascii")


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return body()
