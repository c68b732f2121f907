"""
End to end: 50 consecutive upgrades under load, the normal suite's version of
C{bench/soak.py} (which runs 1,000; see it for what is checked and why), run as the
program it is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

UPGRADES = 50


def test_fiftyUpgradesUnderLoad() -> None:
    """
    No error for short-lived clients and no lost line for long-lived ones; each
    generation's own fds as many as the first's, RSS flat; the pid file always names
    a live generation; never more than two generations, each exits 0, none left.
    """
    soak = [sys.executable, str(ROOT / "bench" / "soak.py"), "--json"]
    clients = ["--short-clients", "4", "--long-clients", "2"]
    done = subprocess.run(
        [*soak, "--upgrades", str(UPGRADES), *clients],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(done.stdout)
    assert done.stdout, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["upgrades"] == UPGRADES
    assert result["generations_sampled"] == UPGRADES + 1
    assert result["failures"] == []
    assert done.returncode == 0, done.stderr
