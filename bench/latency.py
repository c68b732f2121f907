"""
(c) Upgrade latency: SIGHUP -> new flipecho generation ready, vs a bare ``twistd -n``
start of the plain echo server.  Target: txflip's own added cost <= 50 ms.

    python -m bench.latency [--runs 9]

Interleaved, each --runs times:

  - plain start: exec ``twistd -n -y bench/plain_echo.tac`` -> its port accepts a
    connection (polled every 0.5 ms);
  - flipecho start: exec ``twistd -n flipecho`` -> the pid file names it (txflip
    writes it once the generation serves);
  - upgrade: SIGHUP to a running flipecho -> the pid file names the new generation,
    and -> the old one is gone.

txflip's added cost is the upgrade's median minus the plain start's median: what a
hot upgrade costs beyond starting the same kind of server from scratch.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench import _common
from bench._common import (
    HOST,
    command,
    freePort,
    header,
    median,
    ms,
    options,
    pidAlive,
    readPidFile,
    running,
    table,
)


def accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def coldStart(name: str) -> float:
    """Seconds from exec to serving: port accepting (plain), pid file (flipecho)."""
    port = freePort()
    with tempfile.TemporaryDirectory(prefix="txflip-bench-") as directory:
        pidfile = Path(directory) / "server.pid"
        path = _common.pythonPath(name)
        env = {**os.environ, "PYTHONPATH": path, "BENCH_PORT": str(port)}
        started = time.monotonic()
        proc = subprocess.Popen(
            command(name, port, pidfile),
            cwd=directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = started + 30
            while time.monotonic() < deadline:
                if name in ("plain", "plainplugin") and accepts(port):
                    break
                if name == "flipecho" and readPidFile(pidfile) == proc.pid:
                    break
                time.sleep(0.0005)
            else:
                raise RuntimeError(f"{name} did not start")
            return time.monotonic() - started
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    args = options(__doc__, runs=9)
    header(
        "(c) upgrade latency vs a bare twistd start (target: txflip adds <= 50 ms)",
        f"{args.runs} interleaved runs of each, idle server",
    )
    plain: list[float] = []
    flip: list[float] = []
    toNew: list[float] = []
    toGone: list[float] = []
    with running("flipecho") as server:
        for _ in range(args.runs):
            plain.append(coldStart("plain"))
            flip.append(coldStart("flipecho"))
            new, ready, gone = server.upgrade()
            toNew.append(ready)
            toGone.append(gone)
            assert pidAlive(new)
    rows: list[tuple[str, list[float]]] = [
        ("bare start: twistd -n plain echo -> accepting", plain),
        ("cold start: twistd -n flipecho -> pid file (ready)", flip),
        ("upgrade: SIGHUP -> new generation ready", toNew),
        ("upgrade: SIGHUP -> old generation gone", toGone),
    ]
    print(
        table(
            ["median of runs", "median", "min", "max"],
            [[label, ms(median(v)), ms(min(v)), ms(max(v))] for label, v in rows],
        )
    )
    added = median(toNew) - median(plain)
    print()
    print(
        f"   txflip's added cost (upgrade ready - bare plain start, medians):"
        f" {added * 1000:+.0f} ms"
        f" {'(target <= 50 ms: met)' if added <= 0.05 else '(target <= 50 ms: MISSED)'}"
    )
    print(
        f"   upgrade ready - flipecho cold start: {(median(toNew) - median(flip)) * 1000:+.0f} ms"
    )


if __name__ == "__main__":
    main()
