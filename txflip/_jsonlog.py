"""
JSON log lines for machines (C{--log-format json}): journald, log shippers.

One JSON object per line: C{time}, C{level}, C{namespace}, C{message} (the event
formatted as text), C{pid}, C{generation}, C{upgrade_id}, then every field of the
event that is not Twisted's own bookkeeping (C{log_*}), e.g. C{pid}s and
C{generation}s named in txflip's messages under their own names (a field that
would hide one of ours is prefixed with C{field_}).

C{upgrade_id} ties one upgrade's lines together across both generations: the old
generation draws it as the upgrade starts and passes it to the new one in the
environment (L{UPGRADE_ID}); the old one's lines carry it until it exits (its drain
belongs to the upgrade) or until the upgrade failed, the new one's until it is
ready.  Every other line has C{null}.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, MutableMapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from txflip._reactor import Reactor
    from txflip.generation._machine import Upgrader
    from txflip.generation._spawn import Attempt, Spawn, Spawner

#: The environment variable that passes an upgrade's id to the new generation.
UPGRADE_ID = "TXFLIP_UPGRADE_ID"
_OURS = ("time", "level", "namespace", "message", "pid", "generation", "upgrade_id")


class LogContext:
    """
    What every line of this process says besides its event: which generation wrote
    it, in which upgrade.
    """

    def __init__(self) -> None:
        self.generation: int | None = None
        self.upgradeId: str | None = None

    def started(self, generation: int, environ: MutableMapping[str, str]) -> None:
        """
        This process is generation C{generation}; an upgrade's id in C{environ}
        is ours until we are ready (and is removed: it is no one else's).
        """
        self.generation = generation
        self.upgradeId = environ.pop(UPGRADE_ID, None) or None

    def ready(self) -> None:
        """
        This generation serves: the upgrade that started it is over, for it.
        """
        self.upgradeId = None


#: The one context of this process.
context = LogContext()


def newUpgradeId() -> str:
    return uuid.uuid4().hex[:16]


def _value(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _value(v) for k, v in value.items()}
    return str(value)


def formatJSON(event: LogEvent) -> str:
    """
    One line of JSON (with its newline) for C{event}.
    """
    level = event.get("log_level")
    line: dict[str, object] = {
        "time": datetime.fromtimestamp(
            event.get("log_time") or 0, timezone.utc
        ).isoformat(timespec="milliseconds"),
        "level": getattr(level, "name", None),
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
        "pid": os.getpid(),
        "generation": context.generation,
        "upgrade_id": context.upgradeId,
    }
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        line["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key == "format":
            continue
        line[f"field_{key}" if key in _OURS else key] = _value(value)
    return json.dumps(line, ensure_ascii=False) + "\n"


class Writable(Protocol):
    """
    Where lines go: a text file, or L{txflip._log.AppendFile}.
    """

    def write(self, text: str, /) -> object: ...
    def flush(self) -> object: ...


def jsonObserver(outFile: Writable) -> ILogObserver:
    return FileLogObserver(outFile, formatJSON)  # type: ignore[arg-type]


def tagUpgrades(upgrader: Upgrader, reactor: Reactor) -> None:
    """
    Give each upgrade C{upgrader} starts an id: on our lines from its start, and
    the new generation's (through its environment).  The upgrader's own
    generation and inherited id become the context's.
    """
    context.started(upgrader.generation, os.environ)
    upgrader.wrapSpawner(lambda inner: _TaggingSpawner(inner, reactor))


class _TaggingSpawner:
    def __init__(self, inner: Spawner, reactor: Reactor) -> None:
        self._inner = inner
        self._reactor = reactor

    def __call__(self, reactor: Reactor, spawn: Spawn) -> Attempt:
        upgradeId = context.upgradeId = newUpgradeId()
        environ = {**spawn.environ, UPGRADE_ID: upgradeId}
        attempt = self._inner(reactor, spawn._replace(environ=environ))

        def failed(reason: Failure) -> Failure:
            # Once the failure is logged, our lines are no upgrade's any more.
            def over() -> None:
                if context.upgradeId == upgradeId:
                    context.upgradeId = None

            self._reactor.callLater(0, over)
            return reason

        attempt.result.addErrback(failed)
        return attempt

    def __repr__(self) -> str:
        return f"<tagging {self._inner!r}>"
