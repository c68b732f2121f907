"""
The naive upgrade: a supervisor that restarts the server when SIGHUP kills it.

    python bench/naive_restart.py twistd -n --pidfile plain.pid -y bench/plain_echo.tac

twistd installs no SIGHUP handler, so SIGHUP kills the plain echo server on the
spot: its listening socket and every connection die with it, and nothing listens
until the next process has started (what ``systemctl restart`` does, minus the
graceful stop).  Any other exit of the server ends the supervisor too.
"""

from __future__ import annotations

import signal
import subprocess
import sys


def main(command: list[str]) -> int:
    running: list[subprocess.Popen[bytes]] = []

    def terminate(signum: int, frame: object) -> None:
        for child in running:
            child.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, terminate)
    while True:
        running[:] = [subprocess.Popen(command)]
        status = running[0].wait()
        if status != -signal.SIGHUP:
            return status or 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
