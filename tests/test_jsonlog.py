"""
C{--log-format json}: one JSON object a line, with pid, generation, and an
upgrade_id shared by every line of one upgrade across both generations.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import LogLevel

from tests.harness import allGone, waitFor
from tests.run.test_run import supervised  # noqa: F401 - a fixture
from tests.supervised import flipecho, txflip
from txflip import _jsonlog


def records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_formatJSON() -> None:
    """
    The event's own fields, ours, the message as text; a field named like one of
    ours does not hide it.
    """
    line = _jsonlog.formatJSON(
        {
            "log_format": "worker {pid} is {what}",
            "log_level": LogLevel.info,
            "log_namespace": "txflip.test",
            "log_time": 0.0,
            "pid": 42,
            "what": ("ready", 1),
        }
    )
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record["message"] == "worker 42 is ('ready', 1)"
    assert record["level"] == "info" and record["namespace"] == "txflip.test"
    assert record["field_pid"] == 42 and record["pid"] != 42
    assert record["what"] == ["ready", 1]
    assert record["time"].startswith("1970-01-01T00:00:00.000")
    assert "upgrade_id" in record and "generation" in record


def test_oneUpgradeOneId(flip: Any) -> None:
    """
    Standalone: the old generation's lines from the upgrade's start to its exit
    and the new one's until it is ready share one upgrade_id; later lines have
    none.
    """
    server = flip("--log-format", "json", "--control", "ctl")
    old = server.serving()
    result = txflip("upgrade", "--control", str(server.dir / "ctl"))
    assert result.returncode == 0, result.stderr
    new = int(result.stdout.split()[-1])
    server.track(new)
    waitFor(allGone(old), 20, what="the old generation")
    lines = records(server.logText())
    assert lines and all(r["pid"] in (old, new) for r in lines)
    ids = {r["upgrade_id"] for r in lines} - {None}
    assert len(ids) == 1, ids
    tagged = [r for r in lines if r["upgrade_id"]]
    assert {r["pid"] for r in tagged} == {old, new}
    assert {r["generation"] for r in tagged} == {1, 2}
    messages = [r["message"] for r in tagged if r["pid"] == old]
    assert any("finished" in m for m in messages), messages
    assert any("ready" in r["message"] for r in tagged if r["pid"] == new)
    waitFor(
        lambda: any(
            "upgrades allowed" in r["message"] for r in records(server.logText())
        ),
        10,
    )
    later = [r for r in records(server.logText()) if "upgrades allowed" in r["message"]]
    assert later[0]["pid"] == new and later[0]["upgrade_id"] is None
    before = [r for r in lines if r["pid"] == old and not r["upgrade_id"]]
    assert before and all(r["generation"] == 1 for r in before)


def test_underTxflipRun(supervised: Any) -> None:  # noqa: F811
    """
    The supervisor's lines of an upgrade and the new workers' share its id.
    """
    run = supervised(
        flipecho("--log-format", "json"), "--log-format", "json", "--probation", "0"
    )
    result = run.upgrade()
    assert result.returncode == 0, result.stderr
    lines = records(run.logText())
    ids = {r["upgrade_id"] for r in lines} - {None}
    assert len(ids) == 1, ids
    pids = {r["pid"] for r in lines if r["upgrade_id"]}
    new = int(result.stdout.split()[-1])
    assert {run.pid, new} <= pids, (pids, run.pid, new)
    done = [r for r in lines if "upgrade done" in r["message"]]
    assert done and done[0]["upgrade_id"] in ids
