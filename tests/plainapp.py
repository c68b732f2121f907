"""
A plain Twisted program (no twistd) using txflip as a library, as the README shows.

Usage: plainapp.py PIDFILE LISTEN-DESCRIPTION
"""

import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.logger import globalLogBeginner, textFileLogObserver

from txflip import Upgrader, UpgradeService
from txflip.echo import Echo

globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
service = UpgradeService(Upgrader(pidFile=sys.argv[1]))
service.listen(sys.argv[2], Factory.forProtocol(Echo))
service.startService()
reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
reactor.run()
