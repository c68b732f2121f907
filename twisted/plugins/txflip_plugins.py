"""
txflip's plugins: the flipecho twistd plugin, the flip meta-plugin (any other
plugin, upgradable: twistd -n flip web --listen flip:tcp:8080) and the flip:
endpoint parser.

Imported by every twistd (and twistd --help): nothing heavy here, no reactor.
"""

from twisted.application.service import ServiceMaker
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

flipecho = ServiceMaker(
    "flipecho",
    "txflip.echo",
    "A line echo server that upgrades with zero downtime on SIGHUP.",
    "flipecho",
)

flip = ServiceMaker(
    "flip",
    "txflip.twistd",
    "Run another plugin with zero-downtime upgrades (its listeners flip: endpoints).",
    "flip",
)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _FlipParser:
    """
    C{flip:<description>}: the wrapped server endpoint's socket survives upgrades.
    """

    prefix = "flip"

    def parseStreamServer(self, reactor, *args, **kwargs):  # type: ignore[no-untyped-def]
        from txflip._endpoint import parseFlip

        return parseFlip(reactor, *args, **kwargs)


flipEndpoint = _FlipParser()
