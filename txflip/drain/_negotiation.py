"""
Passing a wrapped factory's protocol negotiation (ALPN) on through its wrapper.

C{TLSMemoryBIOFactory} asks the factory it wraps, not the one inside that, which
protocols it speaks (L{IProtocolNegotiationFactory}): twisted.web's C{Site} says
C{h2} and C{http/1.1}.  A wrapper that says nothing makes OpenSSL refuse every
client that offers ALPN (curl, browsers) with an "internal error" alert, while
clients that offer none still work; so a wrapper says what the wrapped factory
says, and says nothing when it says nothing (a factory that speaks no negotiated
protocol must not start answering ALPN).
"""

from __future__ import annotations

from twisted.internet.interfaces import IProtocolFactory, IProtocolNegotiationFactory
from zope.interface import alsoProvides


def passNegotiation(wrapper: IProtocolFactory, wrapped: IProtocolFactory) -> None:
    """
    Make C{wrapper} provide L{IProtocolNegotiationFactory} exactly when
    C{wrapped} does, answering C{acceptableProtocols} with C{wrapped}'s own
    (asked on each handshake, as C{wrapped} could change its answer).
    """
    negotiation = IProtocolNegotiationFactory(wrapped, None)
    if negotiation is None:
        return
    # An attribute of this instance only: the wrapper's class stays without
    # acceptableProtocols for the factories that have none.
    vars(wrapper)["acceptableProtocols"] = negotiation.acceptableProtocols
    alsoProvides(wrapper, IProtocolNegotiationFactory)
