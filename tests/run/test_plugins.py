"""
L{txflip.run._plugins}: a preloaded worker's plugin lookups read its template's
scan.  It replaces C{twisted.plugin.getCache}, the one hook there is: these tests
fail if Twisted stops looking plugins up through it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

#: In a fresh interpreter (the replacement is process-wide): the scan is read
#: for C{twisted.plugins}, and only there.
CHECK = """\
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

import twisted.plugins
from txflip.run._plugins import reuse, scan

scanned = scan()
names = sorted(p.tapname for p in getPlugins(IServiceMaker))
assert "flipecho" in names and "web" in names, names
reuse(scanned)
assert sorted(p.tapname for p in getPlugins(IServiceMaker)) == names

only = {"txflip_plugins": scanned["txflip_plugins"]}
reuse(only)
assert sorted(p.tapname for p in getPlugins(IServiceMaker)) == ["flip", "flipecho"]

import otherplugins  # another plugin package: scanned as before
assert [p.tapname for p in getPlugins(IServiceMaker, otherplugins)] == ["other"]
"""
OTHER = """\
from twisted.application.service import ServiceMaker

other = ServiceMaker("other", "other", "another plugin", "other")
"""


def test_aWorkerLooksPluginsUpInItsTemplatesScan(tmp_path: Path) -> None:
    (tmp_path / "otherplugins").mkdir()
    (tmp_path / "otherplugins" / "__init__.py").write_text("")
    (tmp_path / "otherplugins" / "other.py").write_text(OTHER)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    subprocess.run([sys.executable, "-c", CHECK], check=True, cwd=tmp_path, env=env)


def test_withoutGetCacheItSaysTwistedChanged() -> None:
    code = (
        "import twisted.plugin; del twisted.plugin.getCache\n"
        "from txflip.run._plugins import reuse\n"
        "try:\n"
        "    reuse({})\n"
        "except RuntimeError as e:\n"
        "    assert 'txflip needs updating' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
