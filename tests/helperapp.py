"""
plainapp.py that starts a helper process (C{sleep}) before its reactor runs, as an
application starting a worker pool or a sidecar does; it prints the helper's pid.

Usage: helperapp.py PIDFILE LISTEN-DESCRIPTION
"""

import os
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.logger import globalLogBeginner, textFileLogObserver

from txflip import Upgrader, UpgradeService
from txflip.echo import Echo

globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
service = UpgradeService(Upgrader(pidFile=sys.argv[1]))
service.listen(sys.argv[2], Factory.forProtocol(Echo))
helper = subprocess.Popen(["sleep", "300"])
print(f"pid {os.getpid()} started helper pid {helper.pid}", flush=True)
service.startService()
reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
reactor.run()
