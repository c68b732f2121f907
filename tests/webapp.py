"""
A plain Twisted program serving a directory over HTTP with txflip as a library:
C{import txflip} and nothing else of ours (no C{flip:} endpoint, no twistd).

Usage: webapp.py PIDFILE LISTEN-DESCRIPTION DIRECTORY IDLE-GRACE DRAIN-TIMEOUT [no-move]
"""

import sys

from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.server import Site
from twisted.web.static import File

from txflip import Upgrader, UpgradeService

globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
pidFile, description, directory, grace, timeout = sys.argv[1:6]
service = UpgradeService(
    Upgrader(pidFile=pidFile),
    idleGrace=float(grace),
    drainTimeout=float(timeout),
    move=sys.argv[6:] != ["no-move"],
)
service.listen(description, Site(File(directory)))
service.startService()
reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
reactor.run()
