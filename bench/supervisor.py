"""
(s) ``txflip run``: what the stable-PID supervisor costs, and how it upgrades.

    python bench/supervisor.py [--runs 6] [--seconds 2.5] [--upgrades 5]

Side by side in one run:

1. throughput: flipecho direct (``twistd -n flipecho``) against the same command
   as the single worker of ``txflip run --workers 1`` (target >= 97%): the load
   generator of bench/steady.py, alternating runs, worker and direct server pinned
   to one CPU, the load to the other;
2. upgrade time: the request -> every new worker ready, and -> every old worker
   gone, for direct mode (SIGHUP), 1 and 2 workers (``--probation 0``: the chain
   reload, one new worker after the other);
3. memory: the supervisor's RSS next to a worker's, and what it imports;
4. the share of connections each of 2 workers serves: 200 long-lived connections
   (counted by the supervisor's status), and the CPU each worker spent under
   short-lived connections.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import _common
from _common import (
    HOST,
    Running,
    cpuSeconds,
    header,
    median,
    ms,
    options,
    rssKib,
    start,
    table,
)
from steady import SERVER_CPU, load, pin


def status(server: Running) -> dict[str, object]:
    from txflip._controlcli import request

    answer = request(str(server.dir / "ctl"), "status", 10.0)
    assert answer.get("ok"), answer
    return answer


def workers(server: Running) -> list[dict[str, object]]:
    listed = status(server)["workers"]
    assert isinstance(listed, list)
    return listed


def readyPids(server: Running, generation: int, count: int) -> list[int] | None:
    mine = [w for w in workers(server) if w["generation"] == generation]
    pids = [int(str(w["pid"])) for w in mine if w["state"] == "ready"]
    return pids if len(pids) == count else None


def supervised(count: int) -> Running:
    server = start(f"txflip-run-{count}")
    _common.waitUntil(f"{count} ready workers", lambda: readyPids(server, 1, count), 30)
    return server


def upgradeTimes(server: Running, count: int, upgrades: int) -> tuple[float, float]:
    """
    Median (request -> every new worker ready, request -> every old one gone).  The
    request is C{txflip upgrade}'s (SIGHUP starts the same upgrade), whose answer
    comes when the last new worker is ready: polling the status instead would load
    the supervisor being measured.
    """
    from txflip._controlcli import request

    toReady, toGone = [], []
    for _ in range(upgrades):
        generation = int(str(status(server)["generation"]))
        old = readyPids(server, generation, count)
        assert old is not None
        began = time.monotonic()
        answer = request(str(server.dir / "ctl"), "upgrade", 60.0)
        toReady.append(time.monotonic() - began)
        assert answer.get("ok"), answer
        _common.waitUntil(
            "old workers gone", lambda old=old: not any(map(_common.pidAlive, old)), 60
        )
        toGone.append(time.monotonic() - began)
        time.sleep(0.3)
    return median(toReady), median(toGone)


def throughput(args: argparse.Namespace) -> list[list[str]]:
    rows = []
    direct, run = start("flipecho"), supervised(1)
    try:
        (worker,) = readyPids(run, 1, 1) or [0]
        pids = {"direct": direct.serving() or 0, "txflip run": worker}
        ports = {"direct": direct.port, "txflip run": run.port}
        for pid in pids.values():
            pin(pid, SERVER_CPU)
        for mode in ("connections", "lines"):
            rates: dict[str, list[float]] = {name: [] for name in pids}
            for name in pids:  # warm up
                load(mode, ports[name], pids[name], 0.5)
            for i in range(args.runs):
                order = list(pids) if i % 2 == 0 else list(reversed(pids))
                for name in order:
                    rate, _ = load(mode, ports[name], pids[name], args.seconds)
                    rates[name].append(rate)
            ratios = [
                r / d for r, d in zip(rates["txflip run"], rates["direct"], strict=True)
            ]
            rows.append(
                [
                    "connections/s" if mode == "connections" else "lines/s",
                    f"{median(rates['direct']):,.0f}",
                    f"{median(rates['txflip run']):,.0f}",
                    f"{100 * median(rates['txflip run']) / median(rates['direct']):.1f}%",
                    f"{100 * median(ratios):.1f}%",
                ]
            )
    finally:
        direct.stop()
        run.stop()
    return rows


def share(seconds: float) -> tuple[list[int], list[float]]:
    """(long-lived connections held by each of 2 workers, CPU share under load)."""
    import socket

    run = supervised(2)
    try:
        pids = readyPids(run, 1, 2)
        assert pids is not None
        clients = [socket.create_connection((HOST, run.port)) for _ in range(200)]
        for c in clients:
            c.sendall(b"x\n")
            c.recv(10)
        held = {int(str(w["pid"])): w["connections"] for w in workers(run)}
        for c in clients:
            c.close()
        before = [cpuSeconds(p) for p in pids]
        load("connections", run.port, pids[0], seconds)
        spent = [cpuSeconds(p) - b for p, b in zip(pids, before, strict=True)]
        return [int(str(held[p])) for p in pids], [s / sum(spent) for s in spent]
    finally:
        run.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.5)
    parser.add_argument("--upgrades", type=int, default=5)
    args = options(parser)
    header(
        "(s) txflip run: the supervisor vs direct mode (target >= 97%)",
        f"{args.runs} alternating runs of {args.seconds:g} s; {args.upgrades}"
        " upgrades per case",
    )
    rows = throughput(args)
    print(table(["median", "direct", "txflip run", "run/direct", "paired"], rows))
    print()

    times = []
    direct = start("flipecho")
    try:
        samples = [direct.upgrade()[1:] for _ in range(args.upgrades)]
        toNew, toGone = (median([each[i] for each in samples]) for i in (0, 1))
        times.append(["direct (SIGHUP -> new pid)", ms(toNew), ms(toGone)])
    finally:
        direct.stop()
    memory = []
    for count in (1, 2):
        run = supervised(count)
        try:
            ready, gone = upgradeTimes(run, count, args.upgrades)
            times.append([f"txflip run, {count} worker(s)", ms(ready), ms(gone)])
            if count == 1:
                worker = readyPids(run, args.upgrades + 1, 1)
                assert worker is not None
                memory = [rssKib(run.proc.pid), rssKib(worker[0])]
        finally:
            run.stop()
    print(table(["upgrade", "-> new ready", "-> old gone"], times))
    print()
    python = bareRSS("pass")
    reactor = bareRSS("from twisted.internet import reactor, process")
    print(
        f"   RSS: supervisor {memory[0] / 1024:.1f} MiB, a flipecho worker"
        f" {memory[1] / 1024:.1f} MiB; for scale, a bare python {python:.1f} MiB,"
        f" python with Twisted's reactor imported {reactor:.1f} MiB"
    )
    held, cpu = share(args.seconds * 2)
    print(
        f"   2 workers: 200 long-lived connections held {held[0]} / {held[1]};"
        f" CPU under short connections {100 * cpu[0]:.0f}% / {100 * cpu[1]:.0f}%"
    )


def bareRSS(code: str) -> float:
    """MiB of RSS of a fresh interpreter that ran C{code}."""
    import subprocess

    show = "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{show}"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(_common.CODE)},
    )
    return int(done.stdout) / 1024


if __name__ == "__main__":
    main()
