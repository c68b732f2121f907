"""
The supervisor's status report (C{txflip status} of a C{txflip run}).
"""

from __future__ import annotations

import os
import time
from typing import Protocol

from txflip.run._workers import Sockets, Worker


class Reported(Protocol):
    """
    What the report reads of the supervisor's data.
    """

    generation: int
    sockets: Sockets
    #: How many workers are wanted.
    target: int
    workers: list[Worker]
    note: str | None
    #: When the last upgrade ended, and how.
    lastUpgrade: tuple[float, str] | None


def supervisorStatus(phase: str, startedAt: float, s: Reported) -> dict[str, object]:
    """
    The report, from the supervisor's state (C{phase}) and data.
    """
    last = None
    if s.lastUpgrade is not None:
        last = {"at": s.lastUpgrade[0], "result": s.lastUpgrade[1]}
    reports = [w.status() for w in s.workers if w.state != "gone"]
    counts = [w["connections"] for w in reports if w["state"] == "ready"]
    return {
        "pid": os.getpid(),
        "supervisor": True,
        "state": phase,
        "generation": s.generation,
        "ready": phase in ("serving", "upgrading", "probation"),
        "uptime": round(time.time() - startedAt, 3),
        "connections": sum(c for c in counts if isinstance(c, int)),
        "listeners": s.sockets.describe(),
        "wanted": s.target,
        "workers": reports,
        "note": s.note,
        # The supervisor is never anyone's successor: its pid is the service's.
        "startedBy": {"pid": None, "at": startedAt},
        "lastUpgrade": last,
    }
