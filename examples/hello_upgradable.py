"""
The tutorial's server made upgradable: the same resource, served by txflip's
L{UpgradeService}.  Run it with C{python hello_upgradable.py}; upgrade it with
C{kill -HUP $(cat hello.pid)}; stop it with C{kill -QUIT $(cat hello.pid)}.
"""

import sys

from hello import Hello
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.server import Site

from txflip import Upgrader, UpgradeService


def main(
    listen: str = "tcp:8080:interface=127.0.0.1", pidFile: str = "hello.pid"
) -> None:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    service = UpgradeService(Upgrader(pidFile=pidFile))
    service.listen(listen, Site(Hello()))
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
