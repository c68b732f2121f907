"""
(s) ``txflip run``: what the stable-PID supervisor costs, and how it upgrades.

    python -m bench.supervisor [--runs 6] [--seconds 2.5] [--upgrades 5]

Side by side in one run:

1. throughput: flipecho direct (``twistd -n flipecho``) against the same command
   as the single worker of ``txflip run --workers 1`` (target >= 97%), beside a
   second direct server (the noise floor between two identical processes): the
   load generator of bench/steady.py, rotating runs, the servers pinned to one CPU,
   the load to the other; the CPU each spends per operation, and the supervisor's;
2. upgrade time: the request -> every new worker ready, and -> every old worker
   gone, for direct mode (SIGHUP), 1 and 2 workers (``--probation 0``: the chain
   reload, one new worker after the other);
3. memory: the supervisor's RSS next to a worker's, and what it imports;
4. the share of connections each of 2 workers serves, with balancing (the
   default) and without (``--no-balance``) side by side: 200 long-lived
   connections opened one after another, and 200 at once (counted by the
   supervisor's status); short-lived connections/s and the CPU each worker spent
   under them.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence

from bench import _common
from bench._common import (
    HOST,
    SERVER_CPU,
    Running,
    cpuSeconds,
    header,
    median,
    ms,
    options,
    pin,
    rssKib,
    start,
    table,
)
from bench.steady import load


def status(server: Running) -> dict[str, object]:
    from txflip.control._client import request

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


def supervised(count: int, options: Sequence[str] = (), app: str = "run") -> Running:
    """
    C{txflip run --workers count} with C{options} once every worker is ready:
    of flipecho (C{app} "run") or of bench.hello's web application ("web").
    """
    server = start(f"txflip-{app}-{count}", options=options)
    _common.waitUntil(f"{count} ready workers", lambda: readyPids(server, 1, count), 30)
    return server


def upgradeTimes(
    server: Running, count: int, upgrades: int, hup: bool = False
) -> tuple[float, float]:
    """
    Median (request -> every new worker ready, request -> every old one gone).  The
    request is C{txflip upgrade}'s, whose answer comes when the last new worker is
    ready: polling the status instead would load the supervisor being measured.
    With C{hup}, SIGHUP (which starts the same upgrade), and the status is polled
    every 5 ms until C{count} workers of the next generation are ready.
    """
    from txflip.control._client import request

    toReady, toGone = [], []
    for _ in range(upgrades):
        generation = int(str(status(server)["generation"]))
        old = readyPids(server, generation, count)
        assert old is not None
        began = time.monotonic()
        if hup:
            os.kill(server.proc.pid, signal.SIGHUP)

            def ready(generation: int = generation) -> bool:
                time.sleep(0.005)
                return readyPids(server, generation + 1, count) is not None

            _common.waitUntil(f"{count} new workers ready", ready, 120)
        else:
            answer = request(str(server.dir / "ctl"), "upgrade", 60.0)
            assert answer.get("ok"), answer
        toReady.append(time.monotonic() - began)

        def gone(old: list[int] = old) -> bool:
            return not any(map(_common.pidAlive, old))

        _common.waitUntil("old workers gone", gone, 120)
        toGone.append(time.monotonic() - began)
        time.sleep(0.3)
    return median(toReady), median(toGone)


def throughput(args: argparse.Namespace) -> tuple[list[list[str]], str]:
    """
    Direct mode, a second direct server (the noise floor: two identical
    processes differ by a few percent on this machine), and the single worker
    of txflip run, in rotating order; rates and the serving process's CPU per
    operation.
    """
    rows = []
    servers = {"direct": start("flipecho"), "direct again": start("flipecho")}
    servers["txflip run"] = run = supervised(1)
    try:
        (worker,) = readyPids(run, 1, 1) or [0]
        pids = {name: s.serving() or 0 for name, s in servers.items()}
        pids["txflip run"] = worker
        for pid in pids.values():
            pin(pid, SERVER_CPU)
        supervisorBefore, began = cpuSeconds(run.proc.pid), time.monotonic()
        names = list(servers)
        for mode in ("connections", "lines"):
            rates: dict[str, list[float]] = {name: [] for name in pids}
            costs: dict[str, list[float]] = {name: [] for name in pids}
            for name in pids:  # warm up
                load(mode, servers[name].port, pids[name], 0.5)
            for i in range(args.runs):
                for name in names[i % 3 :] + names[: i % 3]:
                    rate, cost = load(
                        mode, servers[name].port, pids[name], args.seconds
                    )
                    rates[name].append(rate)
                    costs[name].append(cost)

            def percent(name: str, rates: dict[str, list[float]] = rates) -> str:
                return f"{100 * median(rates[name]) / median(rates['direct']):.1f}%"

            paired = [
                r / d for r, d in zip(rates["txflip run"], rates["direct"], strict=True)
            ]
            rows.append(
                [
                    "connections/s" if mode == "connections" else "lines/s",
                    f"{median(rates['direct']):,.0f}",
                    f"{median(rates['txflip run']):,.0f}",
                    percent("txflip run"),
                    f"{100 * median(paired):.1f}%",
                    percent("direct again"),
                    " / ".join(
                        f"{1e6 * median(costs[name]):.1f}"
                        for name in ("direct", "txflip run")
                    ),
                ]
            )
        spent = cpuSeconds(run.proc.pid) - supervisorBefore
        note = (
            f"   (the supervisor itself: {1e3 * spent:.0f} ms of CPU in"
            f" {time.monotonic() - began:.0f} s of load)"
        )
    finally:
        for server in servers.values():
            server.stop()
    return rows, note


def holdLongLived(port: int, count: int, burst: bool) -> list[socket.socket]:
    """
    C{count} connections, each answered once and kept: opened one after another,
    or (C{burst}) all at once, as clients reconnecting together do.
    """
    if not burst:
        clients = []
        for _ in range(count):
            clients.append(socket.create_connection((HOST, port)))
            clients[-1].sendall(b"x\n")
            clients[-1].recv(10)
        return clients
    clients = [socket.socket() for _ in range(count)]
    for c in clients:
        c.setblocking(False)
        c.connect_ex((HOST, port))
    for c in clients:
        c.setblocking(True)
        c.sendall(b"x\n")
    for c in clients:
        c.recv(10)
    return clients


def held(server: Running, pids: list[int], burst: bool) -> list[int]:
    clients = holdLongLived(server.port, 200, burst)
    try:
        counts = {int(str(w["pid"])): w["connections"] for w in workers(server)}
        return [int(str(counts[p])) for p in pids]
    finally:
        for c in clients:
            c.close()
        _common.waitUntil(
            "connections closed",
            lambda: sum(int(str(w["connections"])) for w in workers(server)) == 0,
            30,
        )


def share(args: argparse.Namespace) -> list[list[str]]:
    """
    2 workers with balancing (the default) and without (C{--no-balance}), side
    by side: long-lived connections held by each, short-lived connections/s
    (alternating runs) and the CPU each worker spent under them.
    """
    cases = {"balanced": (), "--no-balance": ("--no-balance",)}
    servers = {
        name: supervised(2, options) for name, options in cases.items()
    }  # fmt: skip
    try:
        pids = {name: readyPids(s, 1, 2) or [] for name, s in servers.items()}
        rows: dict[str, list[str]] = {name: [name] for name in servers}
        for name, server in servers.items():
            for burst in (False, True):
                rows[name].append(" / ".join(map(str, held(server, pids[name], burst))))
        rates: dict[str, list[float]] = {name: [] for name in servers}
        spent = {name: [0.0, 0.0] for name in servers}
        for name, server in servers.items():  # warm up
            load("connections", server.port, pids[name][0], 0.5)
        for i in range(args.runs):
            order = list(servers) if i % 2 == 0 else list(reversed(servers))
            for name in order:
                before = [cpuSeconds(p) for p in pids[name]]
                rate, _ = load(
                    "connections", servers[name].port, pids[name][0], args.seconds
                )
                rates[name].append(rate)
                for k, p in enumerate(pids[name]):
                    spent[name][k] += cpuSeconds(p) - before[k]
        for name in servers:
            cpu = spent[name]
            rows[name].append(f"{median(rates[name]):,.0f}")
            rows[name].append(
                f"{100 * cpu[0] / sum(cpu):.0f}% / {100 * cpu[1] / sum(cpu):.0f}%"
            )
        return list(rows.values())
    finally:
        for server in servers.values():
            server.stop()


def main() -> None:
    args = options(__doc__, runs=6, seconds=2.5, upgrades=5)
    header(
        "(s) txflip run: the supervisor vs direct mode (target >= 97%)",
        f"{args.runs} alternating runs of {args.seconds:g} s; {args.upgrades}"
        " upgrades per case",
    )
    rows, note = throughput(args)
    print(
        table(
            [
                "median",
                "direct",
                "txflip run",
                "run/direct",
                "paired",
                "direct again",
                "CPU µs/op",
            ],
            rows,
        )
    )
    print(
        "   (paired: the median of the ratios of runs side by side; direct again: a"
        " second direct server, the noise floor; CPU: the serving process's, per"
        " operation, direct / txflip run)"
    )
    print(note)
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
    print()
    print(
        table(
            ["2 workers", "200 one by one", "200 at once", "short conn/s", "CPU"],
            share(args),
        )
    )
    print(
        "   (long-lived connections each worker held; short-lived connections/s,"
        " the median of alternating runs, and each worker's share of the CPU)"
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
