"""
(w) Long-lived web connections through an upgrade: WebSockets and HTTP/2.

WebSockets: 1,000 idle WebSocket clients (the C{websockets} library, without
compression) of twisted.web + Autobahn's WebSocketResource behind C{flip:tcp}
(tests/wsapp.py), twice: with a protocol that opts in to moving (IMovable),
whose connections move to the new generation at once; and with one that does
not, whose connections txflip closes with close code 1012 at the end of the
idle grace (they are idle).  Printed: from the new generation ready to the old
one gone, that minus the idle grace for the 1012 close (the closing itself), per
connection, and what the clients saw (a close code, or still open and answered
by the new generation after the upgrade).

HTTP/2: idle HTTP/2 connections (asyncio + h2, over TLS with ALPN, each after
one request) to twisted.web behind C{flip:ssl} (tests/streamapp.py), with
txflip's two-phase GOAWAY and without it (before: the connections are left to
the drain timeout, here 5 s, 30 s by default, and aborted).  Printed: from the
new generation ready to the old one gone.

    python -m bench.websocket [--runs 3] [--connections 1000] [--h2 100]
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from websockets.asyncio.client import connect

from bench import _common
from bench._common import HOST, freePort, header, median, options, table, waitUntil
from tests.conftest import selfSigned
from tests.harness import pidAlive, readPidFile

IDLE_GRACE = 0.5


def start(script: str, description: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(_common.CODE / "tests" / script), description, *extra],
        env={"PYTHONPATH": str(_common.CODE)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def upgrade(pidfile: Path) -> float:
    """
    SIGHUP the serving generation; seconds from its successor being ready (in
    the pid file) to its exit.
    """
    old = readPidFile(pidfile)
    assert old is not None
    os.kill(old, signal.SIGHUP)
    waitUntil("the new generation", lambda: readPidFile(pidfile) not in (None, old), 30)
    ready = time.monotonic()
    waitUntil("the old generation to exit", lambda: not pidAlive(old), 60)
    return time.monotonic() - ready


def stop(proc: subprocess.Popen[bytes], pidfile: Path) -> None:
    """
    Stop the serving generation (and the first, if it still runs); wait for
    both to exit, so that the next run starts alone (its pid file removed).
    """
    pid = readPidFile(pidfile)
    for each in {pid, proc.pid}:
        if each is not None and pidAlive(each):
            os.kill(each, signal.SIGTERM)
    proc.wait(10)
    if pid is not None:
        waitUntil("the server to exit", lambda: not pidAlive(pid), 10)


async def webSockets(
    url: str, count: int, pidfile: Path, move: bool
) -> tuple[float, Counter[str]]:
    clients = []
    for _ in range(count):
        clients.append(
            await connect(url, open_timeout=30, ping_interval=None, compression=None)
        )
    took = await asyncio.get_running_loop().run_in_executor(None, upgrade, pidfile)
    seen: Counter[str] = Counter()
    if move:
        # Still open, and served by the new generation (its pid in the echo).
        serving = f" {readPidFile(pidfile)} "
        for client in clients:
            await client.send("still there?")
            echo = str(await client.recv())
            seen["open, moved" if serving in echo else f"open: {echo}"] += 1
            await client.close()
        return took, seen
    for client in clients:
        await client.wait_closed()
        seen[f"closed {client.close_code}"] += 1
    return took, seen


def webSocketRun(tmp: Path, count: int, move: bool) -> tuple[float, Counter[str]]:
    port, pidfile = freePort(), tmp / f"ws-{'move' if move else 'close'}.pid"
    description = (
        f"flip:tcp:{port}:interface={HOST}:pidfile={pidfile}"
        f":idleGrace={IDLE_GRACE:g}:drainTimeout=30"
    )
    proc = start("wsapp.py", description, *(["move"] if move else []))
    try:
        waitUntil("wsapp", lambda: readPidFile(pidfile), 20)
        url = f"ws://{HOST}:{port}/ws"
        return asyncio.run(webSockets(url, count, pidfile, move))
    finally:
        stop(proc, pidfile)


async def h2Client(port: int, context: ssl.SSLContext) -> None:
    """
    One HTTP/2 connection: one request, then idle until the server's GOAWAY,
    answering its PINGs; then close, as an idle client does.
    """
    reader, writer = await asyncio.open_connection(
        HOST, port, ssl=context, server_hostname="localhost"
    )
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(
        1,
        [
            *((":method", "GET"), (":path", "/small.txt")),
            *((":scheme", "https"), (":authority", "localhost")),
        ],
        end_stream=True,
    )
    writer.write(conn.data_to_send())
    try:
        while data := await reader.read(65536):
            events = conn.receive_data(data)
            writer.write(conn.data_to_send())
            if any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
                break
    except (ConnectionError, ssl.SSLError, h2.exceptions.ProtocolError):
        # h2 refuses the PING that follows a GOAWAY in the same read: done too.
        pass
    writer.close()


async def h2Connections(port: int, count: int, pidfile: Path) -> float:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    clients = [asyncio.create_task(h2Client(port, context)) for _ in range(count)]
    await asyncio.sleep(2.0)
    took = await asyncio.get_running_loop().run_in_executor(None, upgrade, pidfile)
    await asyncio.gather(*clients)
    return took


def h2Run(tmp: Path, count: int, goAway: bool) -> float:
    key, cert = selfSigned(tmp)
    port, pidfile = freePort(), tmp / "h2.pid"
    description = (
        f"flip:ssl:{port}:interface={HOST}:pidfile={pidfile}:idleGrace=1"
        f":drainTimeout=5:privateKey={key}:certKey={cert}"
    )
    proc = start("streamapp.py", description, *([] if goAway else ["no-h2-drain"]))
    try:
        waitUntil("streamapp", lambda: readPidFile(pidfile), 20)
        return asyncio.run(h2Connections(port, count, pidfile))
    finally:
        stop(proc, pidfile)


def main() -> None:
    args = options(__doc__, runs=3, connections=1000, h2=100)
    _common.raiseNofile(4 * args.connections + 256)
    header(
        "(w) WebSockets and HTTP/2 through an upgrade",
        f"{args.runs} runs; idle grace {IDLE_GRACE:g} s for WebSockets",
    )
    wsTimes: dict[bool, list[float]] = {True: [], False: []}
    seen: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}
    h2Times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="txflip-bench-ws-") as tmp:
        for _ in range(args.runs):
            for move in (True, False):
                took, saw = webSocketRun(Path(tmp), args.connections, move)
                wsTimes[move].append(took)
                seen[move].update(saw)
            for goAway in (True, False):
                h2Times[goAway].append(h2Run(Path(tmp), args.h2, goAway))
    rows = []
    for move, label, waited in (
        (True, "moved (IMovable, txflip)", 0.0),
        (False, "closed with 1012 (txflip)", IDLE_GRACE),
    ):
        ws = median(wsTimes[move])
        work = max(ws - waited, 0.0)
        rows.append(
            [
                label,
                args.connections,
                _common.ms(ws),
                _common.ms(work),
                f"{work / args.connections * 1e6:.0f} us",
            ]
        )
    columns = ["WebSockets", "connections", "ready -> old gone", "moving/closing"]
    print(table([*columns, "per conn"], rows))
    for move in (True, False):
        print(f"   clients {'moved' if move else 'closed'}: {dict(seen[move])}")
    print()
    print(
        table(
            ["HTTP/2 drain", "connections", "ready -> old gone", "runs"],
            [
                [
                    label,
                    args.h2,
                    _common.ms(median(h2Times[goAway])),
                    " ".join(_common.ms(t) for t in h2Times[goAway]),
                ]
                for goAway, label in (
                    (True, "two-phase GOAWAY (txflip)"),
                    (False, "before: left to the drain timeout (5 s)"),
                )
            ],
        )
    )


if __name__ == "__main__":
    main()
