"""
Unit tests of moving an HTTP/1.x request that is still arriving, with in-memory
transports: for every byte at which a request can be cut, the old channel's
state, read by a fresh channel and followed by the rest of the request, gives
the same request, the same answer, and a single C{100 Continue}; what must not
move does not; the private attributes of twisted.web read still exist.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.http import HTTPChannel, Request
from twisted.web.resource import Resource
from twisted.web.server import Site

from txflip.move._movable import IMovable
from txflip.protocols import _webmove, _webpartial
from txflip.protocols._webpartial import halfArrived

CHUNKED = (
    b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=value\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n"
)
REQUESTS = {
    "content-length": (
        b"PUT /up?x=1 HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n"
        b"X-Twice: 1\r\nAccept: */*\r\nX-Twice: 2\r\nContent-Length: 10\r\n\r\n"
        b"0123456789"
    ),
    "chunked": CHUNKED,
    "expect": (
        b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody"
    ),
    "http/1.0": b"POST /old HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
}


class Echo(Request):
    """
    Answers with what it received, but C{Expect} (which the old generation
    answers, and leaves out of the state).
    """

    def process(self) -> None:
        assert self.content is not None
        self.content.seek(0)
        headers = sorted(
            (name, values)
            for name, values in self.requestHeaders.getAllRawHeaders()
            if name != b"Expect"
        )
        answer = repr((self.method, self.uri, self.clientproto, headers))
        answer += repr(self.content.read())
        self.setHeader(b"content-length", b"%d" % len(answer))
        self.write(answer.encode())
        self.finish()


def channel(factory: type[Request] = Echo) -> tuple[HTTPChannel, StringTransport]:
    made = HTTPChannel()
    made.requestFactory = factory
    made.callLater = Clock().callLater  # type: ignore[assignment]
    transport = StringTransport()
    made.makeConnection(transport)
    return made, transport


def answered(data: bytes) -> bytes:
    one, transport = channel()
    one.dataReceived(data)
    written: bytes = transport.value()
    return written


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_everyCutGoesOnInANewChannel(name: str) -> None:
    """
    Cut anywhere before its end, the request goes on in a new channel fed the
    old one's state: what both wrote is what one channel writes for the whole
    request (one C{100 Continue}, the same answer).  Only the chunked body's
    last CRLF (the trailer section) cannot be carried.
    """
    raw = REQUESTS[name]
    whole = answered(raw)
    assert whole.count(b"100 Continue") == (name == "expect"), whole
    for cut in range(len(raw)):
        old, before = channel()
        old.dataReceived(raw[:cut])
        state = halfArrived(old)
        if name == "chunked" and cut >= len(raw) - 2:
            assert state is None, cut
            continue
        assert state is not None, cut
        new, after = channel()
        new.dataReceived(state)
        assert after.value() == b"", (cut, state)
        new.dataReceived(raw[cut:])
        assert before.value() + after.value() == whole, (cut, state)
        # Asking does not change the old channel: it still goes on.
        old.dataReceived(raw[cut:])
        assert before.value() == whole, cut


def test_chunkedPositions() -> None:
    """
    The position in a chunked body as the new parser needs it: the body so far
    as one chunk, then the rest of the chunk being read as a chunk of its own,
    or the CRLF still to come, or the part of the size line that arrived.
    """
    head = CHUNKED[: CHUNKED.index(b"\r\n\r\n") + 4]
    cases = {
        b"5;name=value\r\nhel": b"3\r\nhel\r\n2\r\n",
        b"5;name=value\r\nhello": b"5\r\nhello",
        b"5;name=value\r\nhello\r": b"5\r\nhello\r",
        b"5;name=value\r\nhello\r\n1": b"5\r\nhello\r\n1",
        b"5;name=": b"5;name=",
    }
    for sent, carried in cases.items():
        old, _ = channel()
        old.dataReceived(head + sent)
        state = halfArrived(old)
        assert state is not None
        assert state.partition(b"\r\n\r\n")[2] == carried, sent


class Streaming(Echo):
    def handleContentChunk(self, data: bytes) -> None:
        super().handleContentChunk(data)


def test_whatMustNotMoveDoesNot(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    No state (L{None}) for: a request dispatched to its resource (with a
    further one pipelined behind it), a request class that handles the body as
    it arrives, a body so far larger than a state may be.  Between requests
    the state is empty.
    """
    busy, _ = channel(Request)  # never answers
    busy.dataReceived(b"GET / HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n")
    assert halfArrived(busy) is None
    own, _ = channel(Streaming)
    own.dataReceived(REQUESTS["content-length"][:-3])
    assert halfArrived(own) is None
    idle, _ = channel()
    idle.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
    assert halfArrived(idle) == b""
    large, _ = channel()
    large.dataReceived(REQUESTS["content-length"][:-3])
    assert halfArrived(large) is not None
    monkeypatch.setattr(_webpartial, "MAX_BODY", 6)
    assert halfArrived(large) is None


def test_privateAttributesReadStillExist() -> None:
    """
    Every private attribute of twisted.web L{_webpartial} reads is there in
    the states it reads them: headers arriving, a Content-Length body, a
    chunk's data.
    """
    headers, _ = channel()
    headers.dataReceived(b"PUT / HTTP/1.1\r\nHost: x")
    identity, _ = channel()
    identity.dataReceived(REQUESTS["content-length"][:-3])
    chunked, _ = channel()
    chunked.dataReceived(CHUNKED[: CHUNKED.index(b"hel") + 2])
    decoders = [identity._transferDecoder, chunked._transferDecoder]
    for found in [headers, identity, chunked, *decoders]:
        for name in _webpartial.PRIVATE[type(found)]:
            assert hasattr(found, name), f"{type(found).__name__}.{name}"
    assert {type(d) for d in decoders} | {HTTPChannel} == set(_webpartial.PRIVATE)


class Length(Resource):
    isLeaf = True

    def render_PUT(self, request: Any) -> bytes:
        return b"%d\n" % len(request.content.read())


def test_siteProtocolMovesMidBody() -> None:
    """
    Through the adapters, on the protocol C{Site} builds: the state of an
    upload in progress, imported into a new protocol, is read before the rest
    of the body, and the new one answers.
    """
    site = Site(Length())
    old = site.buildProtocol(None)
    old.makeConnection(StringTransport())
    old.dataReceived(b"PUT / HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc")
    state = IMovable(old).exportState()
    assert state is not None and state.version == _webmove.PARTIAL
    new = site.buildProtocol(None)
    IMovable(new).importState(state)
    transport = StringTransport()
    new.makeConnection(transport)
    new.dataReceived(b"def")
    assert transport.value().startswith(b"HTTP/1.1 200 OK")
    assert transport.value().endswith(b"\r\n\r\n6\n")
