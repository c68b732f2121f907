"""
The protocol tests' fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.protocols.apps import FlipApp


@pytest.fixture
def wsapp(tmp_path: Path) -> Iterator[object]:
    """
    Start tests/wsapp.py; C{mode} holds its mode words (C{"direct move"}).
    """
    started: list[FlipApp] = []

    def start(
        idleGrace: float = 1.0, drainTimeout: float = 30.0, mode: str = ""
    ) -> FlipApp:
        extra = tuple(mode.split())
        app = FlipApp(tmp_path, "wsapp", idleGrace, drainTimeout, extra=extra)
        started.append(app)
        return app

    yield start
    for app in started:
        app.proc.close()
