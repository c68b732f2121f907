"""
The public draining signal, one name for every kind of subject: the whole
generation, a connection's protocol, or a twisted.web request whose response
streams (server-sent events, a long poll).
"""

from __future__ import annotations

import sys

from twisted.internet.defer import Deferred

from txflip.drain._signal import whenDraining as whenConnectionDraining


def whenDraining(subject: object | None = None) -> Deferred[None]:
    """
    A L{Deferred} that fires (with L{None}) once this generation drains: the
    whole process (no argument), the connection of a protocol, or a twisted.web
    request (C{IRequest}: its connection is told to end, or, over HTTP/2, its
    stream's GOAWAY is out), so that a streaming resource ends at its next
    boundary (an SSE event with a C{retry:} hint) and the client reconnects to
    the new generation at once.
    """
    iweb = sys.modules.get("twisted.web.iweb")  # a request exists only if it is
    if subject is not None and iweb is not None and iweb.IRequest.providedBy(subject):
        from txflip.protocols._webdraining import whenRequestDraining

        return whenRequestDraining(subject)  # type: ignore[arg-type]
    return whenConnectionDraining(subject)
