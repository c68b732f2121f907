"""
(a) Upgrades under load: flipecho vs a naive restart vs a SO_REUSEPORT handoff.

    python -m bench.upgrades [--runs 3] [--upgrades 20] [--spacing 0.8]

Each run starts a server and runs ``txflip check`` against it (4 short-lived and 4
long-lived clients, N upgrades spaced over the run), then reports errors per 100
upgrades, median over the runs.  A client whose connect is refused retries after
1 ms, and every attempt counts, so refused errors measure downtime too.

  - flipecho: txflip, listening sockets inherited by the next generation;
  - naive: the plain Twisted echo server, killed by SIGHUP and restarted by a
    supervisor (tests/naive_server.py --restart);
  - reuseport: each generation binds its own SO_REUSEPORT socket, and the old one
    closes its own once the new one is ready; draining as txflip's
    (bench/reuseport_echo.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bench._common import ROOT, header, median, ms, options, running, table

SERVERS = ("flipecho", "reuseport", "naive")


def check(port: int, pidfile: str, upgrades: int, spacing: float) -> dict[str, Any]:
    duration = spacing * (upgrades + 1)
    argv = [
        sys.executable, "-m", "txflip", "check", "--port", str(port),
        "--pid-file", pidfile, "--short-clients", "4", "--long-clients", "4",
        "--duration", str(duration), "--upgrades", str(upgrades),
        "--upgrade-timeout", "10", "--json",
    ]  # fmt: skip
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=duration + 120
    )
    if not done.stdout:
        raise RuntimeError(f"txflip check failed: {done.stderr}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def main() -> None:
    args = options(__doc__, runs=3, upgrades=20, spacing=0.8)
    header(
        "(a) upgrades under load: errors per 100 upgrades",
        f"{args.runs} runs x {args.upgrades} upgrades per server,"
        f" one every {args.spacing} s; 4 short + 4 long clients (txflip check)",
    )
    reports: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVERS}
    for run in range(args.runs):
        for name in SERVERS if run % 2 == 0 else reversed(SERVERS):
            with running(name) as server:
                report = check(
                    server.port, str(server.pidfile), args.upgrades, args.spacing
                )
            reports[name].append(report)
            total = report["total"]
            print(
                f"   run {run + 1} {name:<10} errors {total['errors']:>6}"
                f"  lost {total['lost_lines']:>4}"
                f"  upgrades {report['upgrades_completed']}/{args.upgrades}",
                flush=True,
            )
    print()

    def per100(report: dict[str, Any], value: float) -> str:
        return f"{100 * value / max(report['upgrades_completed'], 1):.0f}"

    def latency(runs: list[dict[str, Any]], name: str) -> str:
        values = [r["upgrade_latency_s"][name]["p50"] for r in runs]
        values = [v for v in values if v is not None]
        return ms(median(values)) if values else "-"

    def errors(report: dict[str, Any], group: str, *kinds: str) -> int:
        byKind = report[group]["errors_by_kind"]
        return sum(byKind[k] for k in kinds) if kinds else report[group]["errors"]

    others = ("timeout", "short_read", "wrong_echo", "other")
    columns: list[tuple[str, Any]] = [
        ("errors", lambda r: errors(r, "total")),
        ("short", lambda r: errors(r, "short")),
        ("long", lambda r: errors(r, "long")),
        ("refused", lambda r: errors(r, "total", "refused")),
        ("reset", lambda r: errors(r, "total", "reset")),
        ("other", lambda r: errors(r, "total", *others)),
        ("lost lines", lambda r: r["total"]["lost_lines"]),
    ]
    rows = []
    for name in SERVERS:
        runs = reports[name]
        row = [name]
        for _, get in columns:
            row.append(f"{median([float(per100(r, get(r))) for r in runs]):.0f}")
        row.append(
            f"{sum(r['upgrades_completed'] for r in runs)}/{args.upgrades * len(runs)}"
        )
        row.append(latency(runs, "sighup_to_new_pid"))
        row.append(latency(runs, "sighup_to_old_gone"))
        rows.append(row)
    print("   per 100 upgrades (median of the runs):")
    headers = ["server", *(title for title, _ in columns)]
    headers += ["upgrades done", "HUP->new pid p50", "HUP->old gone p50"]
    print(table(headers, rows))
    totals = {
        name: sum(r["total"]["errors"] for r in reports[name]) for name in SERVERS
    }
    done = {
        name: sum(r["upgrades_completed"] for r in reports[name]) for name in SERVERS
    }
    print()
    print(
        "   all runs: "
        + ", ".join(f"{n} {totals[n]} errors in {done[n]} upgrades" for n in SERVERS)
    )


if __name__ == "__main__":
    main()
