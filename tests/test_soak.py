"""
End to end: 50 consecutive upgrades under load, the normal suite's version of
C{bench/soak.py} (which runs 1,000; see it for what is checked and why).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from conftest import ROOT

UPGRADES = 50


def loadSoak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", ROOT / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module
    spec.loader.exec_module(module)
    return module


def test_fifty_upgrades_under_load() -> None:
    """
    No error for short-lived clients and no lost line for long-lived ones; each
    generation's own fds as many as the first's, RSS flat; the pid file always names
    a live generation; never more than two generations, each exits 0, none left.
    """
    soak = loadSoak()
    result = soak.soak(UPGRADES, short=4, long=2)
    print(f"\n{result.summary()}")
    assert result.upgrades == UPGRADES
    assert len(result.samples) == UPGRADES + 1
    assert result.failures() == []
