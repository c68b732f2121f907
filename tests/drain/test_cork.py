"""
End to end: a connection closed with its reply sends the reply and the FIN in one
segment, so a lock-step client always sees the close with the reply.  (How often
it did before: bench/close_segments.py.)
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys

from tests.conftest import ROOT
from tests.harness import canConnect, freePort, waitFor


def test_closeWithReplyIsSeenWithTheReply() -> None:
    port = freePort()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "drainingecho.py"), str(port)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        waitFor(lambda: canConnect("127.0.0.1", port), 20, what="the server")
        late = 0
        for _ in range(300):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"x\n")
                assert s.recv(64) == b"x\n"
                readable, _, _ = select.select([s], [], [], 0)
                if not readable or s.recv(1, socket.MSG_PEEK) != b"":
                    late += 1
        assert late == 0, f"{late} of 300 closes arrived after their reply"
    finally:
        server.kill()
        server.wait()
