"""
C{txflip check}'s report: what the clients counted and how the upgrades went, as a
table or as JSON, and the verdict (the exit status).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable
from json import dumps
from typing import Any

from txflip.check._pid import Upgrade
from txflip.check._stats import Counters

#: Exit statuses.
OK, FAILED, BAD_INPUT = 0, 1, 2


def _round(seconds: float | None, digits: int = 4) -> float | None:
    return None if seconds is None else round(seconds, digits)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 10:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s"


def _p50Max(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "max": None}
    ordered = sorted(values)
    return {"p50": ordered[(len(ordered) - 1) // 2], "max": ordered[-1]}


def _upgradeJSON(u: Upgrade) -> dict[str, Any]:
    return {
        "number": u.number,
        "old_pid": u.oldPid,
        "new_pid": u.newPid,
        "to_new_s": _round(u.toNew),
        "to_old_gone_s": _round(u.toOldGone),
        "ok": u.ok,
        "error": u.error or None,
    }


@dataclasses.dataclass
class Report:
    """
    What a check saw; L{table} and L{asJson} show it, L{status} judges it.

    C{groups} holds each kind of client's counters by name (echo: C{short} and
    C{long}), C{clients} how many clients of each kind ran.
    """

    target: str
    seconds: float
    clients: dict[str, int]
    groups: dict[str, Counters]
    upgradesPlanned: int
    upgrades: list[Upgrade]
    maxErrors: int
    stuckThreads: bool = False

    @property
    def total(self) -> Counters:
        return functools.reduce(operator.add, self.groups.values())

    def upgradeFailures(self) -> list[str]:
        failures = [f"upgrade {u.number}: {u.error}" for u in self.upgrades if u.error]
        for number in range(len(self.upgrades) + 1, self.upgradesPlanned + 1):
            failures.append(f"upgrade {number}: not started (the run ended first)")
        return failures

    def status(self) -> int:
        if self.total.errorsTotal() > self.maxErrors or self.upgradeFailures():
            return FAILED
        return OK

    def verdict(self) -> str:
        total = self.total
        done = sum(u.ok for u in self.upgrades)
        word = "OK" if self.status() == OK else "FAILED"
        return (
            f"{word}: {total.errorsTotal()} errors (max {self.maxErrors}),"
            f" {total.lost} lost {total.unit},"
            f" {done}/{self.upgradesPlanned} upgrades completed"
        )

    def _latencies(self) -> dict[str, dict[str, float | None]]:
        ok = [u for u in self.upgrades if u.ok]
        return {
            "sighup_to_new_pid": _p50Max([u.toNew for u in ok if u.toNew is not None]),
            "sighup_to_old_gone": _p50Max(
                [u.toOldGone for u in ok if u.toOldGone is not None]
            ),
        }

    def asJson(self) -> dict[str, Any]:
        def group(stats: Counters) -> dict[str, Any]:
            shown: dict[str, Any] = {
                "connections": stats.connections,
                stats.unit: stats.exchanges,
                "errors": stats.errorsTotal(),
                "errors_by_kind": {k: stats.count(k) for k in stats.kinds},
                f"lost_{stats.unit}": stats.lost,
                "closed_by_server": stats.closedByServer,
            }
            for name, latency in stats.latencies().items():
                shown[f"{name}_latency_s"] = {
                    "p50": _round(latency.quantile(0.5), 6),
                    "p99": _round(latency.quantile(0.99), 6),
                    "max": _round(latency.max if latency.count else None, 6),
                }
            shown["samples"] = stats.samples
            return shown

        total = self.total
        seconds = max(self.seconds, 1e-9)
        return {
            "target": self.target,
            "seconds": round(self.seconds, 3),
            **{f"{name}_clients": n for name, n in self.clients.items()},
            **{name: group(stats) for name, stats in self.groups.items()},
            "total": group(total),
            "throughput": {
                "connections_per_s": round(total.connections / seconds, 1),
                f"{total.unit}_per_s": round(total.exchanges / seconds, 1),
            },
            "upgrades_planned": self.upgradesPlanned,
            "upgrades_completed": sum(u.ok for u in self.upgrades),
            "upgrades": [_upgradeJSON(u) for u in self.upgrades],
            "upgrade_latency_s": {
                name: {k: _round(v) for k, v in values.items()}
                for name, values in self._latencies().items()
            },
            "failures": self.upgradeFailures(),
            "stuck_threads": self.stuckThreads,
            "max_errors": self.maxErrors,
            "ok": self.status() == OK,
        }

    def table(self) -> str:
        total = self.total
        columns = [*self.groups.values(), total]
        kinds = " + ".join(f"{n} {name}" for name, n in self.clients.items())
        lines = [
            f"txflip check: {self.target} for {self.seconds:.1f} s, {kinds} clients,"
            f" {self.upgradesPlanned} upgrades",
            "",
            f"{'':<22}" + "".join(f"{name:>10}" for name in [*self.groups, "total"]),
        ]

        def row(label: str, value: Callable[[Counters], int]) -> None:
            values = [value(s) for s in columns]
            lines.append(f"{label:<22}" + "".join(f"{v:>10}" for v in values))

        row("connections", lambda s: s.connections)
        row(total.doneLabel, lambda s: s.exchanges)
        row("errors", lambda s: s.errorsTotal())
        for kind in total.kinds:
            row(
                f"  {kind.replace('_', ' ')}",
                functools.partial(Counters.count, kind=kind),
            )
        row(f"lost {total.unit}", lambda s: s.lost)
        row("closed by server", lambda s: s.closedByServer)
        seconds = max(self.seconds, 1e-9)
        lines.append("")
        for name, latency in total.latencies().items():
            lines.append(
                f"{name + ' latency':<22}p50 {_ms(latency.quantile(0.5))}"
                f"   p99 {_ms(latency.quantile(0.99))}"
                f"   max {_ms(latency.max if latency.count else None)}"
            )
        lines.append(
            f"{'throughput':<22}{total.connections / seconds:.0f} connections/s"
            f"   {total.exchanges / seconds:.0f} {total.unit}/s"
        )
        if self.upgradesPlanned:
            lines += [
                "",
                f"{'upgrade':<10}{'old pid':>9}{'new pid':>9}"
                f"{'SIGHUP→new pid':>17}{'SIGHUP→old gone':>18}",
            ]
            for u in self.upgrades:
                lines.append(
                    f"{u.number:<10}{u.oldPid or '-'!s:>9}{u.newPid or '-'!s:>9}"
                    f"{_ms(u.toNew):>17}{_ms(u.toOldGone):>18}"
                )
            latencies = self._latencies()
            for stat in ("p50", "max"):
                lines.append(
                    f"{stat:<28}"
                    f"{_ms(latencies['sighup_to_new_pid'][stat]):>17}"
                    f"{_ms(latencies['sighup_to_old_gone'][stat]):>18}"
                )
        problems = self.upgradeFailures()
        if self.stuckThreads:
            problems.append("some client threads did not stop in time")
        samples = total.samples[:5]
        if problems or samples:
            lines.append("")
        lines += problems
        if samples:
            lines.append("first errors:")
            lines += [f"  {sample}" for sample in samples]
        lines += ["", self.verdict()]
        return "\n".join(lines)


def show(report: Report, json: bool) -> int:
    """Print C{report}, as a table or JSON; the exit status."""
    if json:
        print(dumps(report.asJson(), indent=2))
    else:
        print(report.table())
    return report.status()
