from twisted.application.service import ServiceMaker

flipecho = ServiceMaker(
    "flipecho",
    "txflip.echo",
    "A line echo server that upgrades with zero downtime on SIGHUP.",
    "flipecho",
)
