"""
The baseline (L{bench.plain_echo}) as a C{.tac}: twistd discovers no plugin.

    BENCH_PORT=8080 PYTHONPATH=. twistd -n --pidfile plain.pid -y bench/plain_echo.tac

Upgrading it means restarting it (see tests/naive_server.py --restart).
"""

import os

from twisted.application import service

from bench.plain_echo import echoService

application = service.Application("plain-echo")
echoService(int(os.environ.get("BENCH_PORT", "8080"))).setServiceParent(application)
