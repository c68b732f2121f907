"""
The request an HTTP/1.x channel is in the middle of receiving, as the bytes that
bring a fresh channel to the same point: so that an upload in progress moves to
the next generation, whose channel parses on and whose resource answers.

twisted.web parses as it reads: the request line and the headers are parsed
(C{Request.requestHeaders}), the body received so far is decoded into
C{Request.content}, and the parser holds its position (the Content-Length still
to come; for a chunked body, the state of the chunk being read).  Rather than
keep a copy of every request's bytes from its first byte (paid by every
request, for the few an upgrade catches), we re-serialize that state when the
move asks for it:

  - the request line and the headers as parsed (names canonical, folded lines
    joined, C{Name:value}: never longer than what arrived, so no limit of the
    new parser is reached that the old one was not); a header line still open
    (a continuation may follow) and the part of a line not yet split follow as
    they are;
  - an C{Expect: 100-continue} the old channel already answered is left out:
    the client already has its C{100 Continue}, and sends the body anyway;
  - a Content-Length body: the bytes received so far; the new parser then
    expects exactly the bytes the client has still to send;
  - a chunked body: the decoded body so far as one chunk, then the position in
    the chunk being read: the part of its size line that has arrived, or a
    chunk header for the bytes of the current chunk still to come, or (chunk
    data complete, its CRLF not yet) the body so far without its CRLF; then
    whatever the decoder buffered.  Trailers are not carried: a request at its
    trailer is about to be dispatched, and is answered here.

Only a request that no resource has seen moves: twisted.web dispatches a
request (C{requestReceived}) once its body is complete, and the channel then
holds any further bytes until it is answered.  A request class that does
something of its own with the body as it arrives (C{gotLength} or
C{handleContentChunk} overridden) does not move, nor does one whose body so far
would not fit in a move's state (L{MAX_BODY}).

The private attributes of twisted.web read here are all named in L{PRIVATE}
(L{twisted.web.http}'s decoders, and C{HTTPChannel}'s parser state beside the
buffers L{txflip.protocols._web.PRIVATE} names); a test
(C{tests/protocols/test_upload_unit.py}) checks that they still exist, in each
state this module reads them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from twisted.web.http import HTTPChannel, Request
from twisted.web.http import _ChunkedTransferDecoder as _Chunked
from twisted.web.http import _IdentityTransferDecoder as _Identity

from txflip.move._movable import MAX_STATE

#: The private attributes read, by class, on a channel receiving a request's
#: headers or body (the decoders' in the states read).
PRIVATE: dict[type, tuple[str, ...]] = {
    HTTPChannel: (
        "_buffer",
        "_dataBuffer",
        "_handlingRequest",
        "_transferDecoder",
        "_command",
        "_path",
        "_version",
        "_HTTPChannel__header",
    ),
    _Identity: ("contentLength",),
    _Chunked: ("state", "length", "_buffer"),
}
_OPEN_HEADER = PRIVATE[HTTPChannel][-1]

#: A body received so far larger than this does not move (the old generation
#: reads it to the end): it travels in the state, with the head of the request.
MAX_BODY = MAX_STATE - 4 * HTTPChannel.totalHeadersSize


def halfArrived(channel: HTTPChannel) -> bytes | None:
    """
    What a new channel must read first to be where C{channel} is.

    @return: the bytes of the request C{channel} is receiving, re-serialized as
        above; C{b""} between two requests (nothing of the next has arrived);
        L{None} if C{channel} is where nothing can be carried: a request
        being handled or answered, a connection that closes after its
        response, or one of the cases above.
    """
    handling: bool = channel._handlingRequest
    if handling or any(channel._dataBuffer):
        return None
    rest: bytes = channel._buffer
    if not channel.requests:
        # The request line (or nothing) is arriving.
        return rest if channel.persistent else None
    request = channel.requests[-1]
    head = _head(channel, request)
    if head is None or len(channel.requests) != 1 or not _untouched(request):
        return None
    if channel.line_mode:
        # Headers are arriving.
        pending: bytes = getattr(channel, _OPEN_HEADER)
        return head + (pending + b"\r\n" if pending else b"") + rest
    body = _bodySoFar(request)
    if body is None:
        return None
    tail = _position(channel._transferDecoder, request, body)
    return None if tail is None else head + b"\r\n" + tail + rest


def _head(channel: HTTPChannel, request: Request) -> bytes | None:
    """
    The request line and the header lines parsed so far, each with its CRLF.
    """
    command, path, version = (
        getattr(channel, name, None) for name in ("_command", "_path", "_version")
    )
    if not all(isinstance(part, bytes) for part in (command, path, version)):
        return None
    lines = [b"%s %s %s" % (command, path, version)]
    for name, values in request.requestHeaders.getAllRawHeaders():
        if name.lower() == b"expect" and _continued(channel, version, values):
            continue
        lines += [name + b":" + value for value in values]
    return b"".join(each + b"\r\n" for each in lines)


def _continued(channel: HTTPChannel, version: object, values: Sequence[bytes]) -> bool:
    """
    Whether C{channel} answered these C{Expect} values with C{100 Continue}:
    it does once all the headers have arrived (raw mode), as
    C{HTTPChannel.allHeadersReceived} does.
    """
    return (
        not channel.line_mode
        and version == b"HTTP/1.1"
        and values[0].lower() == b"100-continue"
    )


def _untouched(request: Any) -> bool:
    """
    Whether C{request}'s body goes where twisted.web puts it (C{content}), and
    nothing has been written for it.
    """
    kind = type(request)
    return (
        isinstance(request, Request)
        and kind.gotLength in _contentFileMakers()
        and kind.handleContentChunk is Request.handleContentChunk
        and not request.startedWriting
    )


def _contentFileMakers() -> tuple[object, ...]:
    """
    The C{gotLength} methods that open C{content} as twisted.web does: the
    plain request's, and the C{Site} request's (which asks the site's public
    C{getContentFile}); not imported here, since a server of only
    C{twisted.web.http} never needs it.
    """
    server = sys.modules.get("twisted.web.server")
    if server is None:
        return (Request.gotLength,)
    return (Request.gotLength, server.Request.gotLength)


def _bodySoFar(request: Request) -> bytes | None:
    """
    The body received so far, read back from C{request.content} (which stays as
    it was), if it can be.
    """
    content: Any = request.content
    try:
        size = content.tell()
        if size > MAX_BODY:
            return None
        content.seek(0)
        try:
            body = content.read(size)
        finally:
            content.seek(size)
    except (AttributeError, OSError, ValueError):
        # A content file of the site's own (Site.getContentFile) that cannot
        # be read back.
        return None
    return body if isinstance(body, bytes) and len(body) == size else None


def _position(decoder: object, request: Request, body: bytes) -> bytes | None:
    """
    The body so far as the client sent it, up to where it is now.
    """
    if isinstance(decoder, _Identity):
        declared = request.requestHeaders.getRawHeaders(b"content-length", [b""])
        left: int = decoder.contentLength
        if not declared[0].isdigit() or len(body) + left != int(declared[0]):
            return None
        return body
    if not isinstance(decoder, _Chunked):
        return None
    state: str = decoder.state
    buffered = bytes(decoder._buffer)
    sofar = b"%x\r\n%s" % (len(body), body) if body else b""
    if state == "CRLF" and body:
        # The chunk's data is in, its CRLF is (partly) to come.
        return sofar + buffered
    if state not in ("CHUNK_LENGTH", "BODY"):
        return None
    sofar += b"\r\n" if body else b""
    if state == "BODY":
        # In the middle of a chunk: the rest of it is a chunk of its own.
        sofar += b"%x\r\n" % decoder.length
    return sofar + buffered
