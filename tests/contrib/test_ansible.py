"""
C{contrib/ansible/rolling-upgrade.yml}, run for real by C{ansible-playbook} against an
inventory of three local services (connection C{local}), each a C{txflip run} under
client load.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.harness import Load
from tests.run.test_run import BAD_DEPLOY
from tests.supervised import Supervised, flipecho

PLAYBOOK = ROOT / "contrib" / "ansible" / "rolling-upgrade.yml"
PLAYBOOK_COMMAND = shutil.which(
    "ansible-playbook", path=os.path.dirname(sys.executable)
)

pytestmark = pytest.mark.skipif(
    PLAYBOOK_COMMAND is None, reason="ansible-core is not installed (the test extra)"
)


def inventory(tmp: Path, services: list[Supervised]) -> Path:
    lines = ["[fleet]"]
    for number, service in enumerate(services, 1):
        lines.append(
            f"host{number} ansible_connection=local"
            f" ansible_python_interpreter={sys.executable}"
            f" txflip_control={service.control}"
        )
    path = tmp / "inventory"
    path.write_text("\n".join(lines) + "\n")
    return path


def playbook(tmp: Path, hosts: Path) -> subprocess.CompletedProcess[str]:
    """
    ansible-playbook, with C{txflip} (this checkout's) first on the PATH.
    """
    bin = tmp / "bin"
    bin.mkdir(exist_ok=True)
    wrapper = bin / "txflip"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m txflip "$@"\n')
    wrapper.chmod(0o755)
    home = tmp / "ansible"
    env = {
        **os.environ,
        "PATH": f"{bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(ROOT),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(home / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    }
    assert PLAYBOOK_COMMAND is not None
    return subprocess.run(
        [PLAYBOOK_COMMAND, "-i", str(hosts), str(PLAYBOOK)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )


def generations(services: list[Supervised]) -> list[int]:
    return [service.status()["generation"] for service in services]


@pytest.mark.slow
def test_rollingUpgradeStopsAtTheFirstFailure(tmp_path: Path) -> None:
    """
    All three hosts upgraded one at a time, with 0 client errors; then a bad deploy
    on the second: the play stops there, the first runs the new version, the second
    and third the old one, all serving, 0 client errors.
    """
    services: list[Supervised] = []
    with ExitStack() as stack:
        for number in (1, 2, 3):
            directory = tmp_path / f"host{number}"
            directory.mkdir()
            service = Supervised(
                directory,
                ["sh", "-c", BAD_DEPLOY, "sh", *flipecho()],
                "--workers",
                "2",
                "--probation",
                "1",
            )
            stack.callback(service.close)
            services.append(service)
        for service in services:
            service.waitReady()
        hosts = inventory(tmp_path, services)
        loads: list[Any] = [
            stack.enter_context(Load("127.0.0.1", s.port, short=2, long=2))
            for s in services
        ]

        result = playbook(tmp_path, hosts)
        assert result.returncode == 0, result.stdout + result.stderr
        for number in (1, 2, 3):
            assert f"host{number}: new workers " in result.stdout, result.stdout
        assert generations(services) == [2, 2, 2]

        (services[1].dir / "broken").touch()
        result = playbook(tmp_path, hosts)
        assert result.returncode != 0, result.stdout
        assert "host1: new workers " in result.stdout, result.stdout
        assert "bad deploy" in result.stdout or "status 3" in result.stdout, (
            result.stdout
        )
        assert "host3" not in result.stdout.partition("PLAY RECAP")[0], result.stdout
        assert generations(services) == [3, 2, 2]
        for service, load in zip(services, loads, strict=True):
            service.waitReady()
            before = load.stats.exchanges
            load.stop()
            stats = load.stats
            assert stats.exchanges > before or stats.exchanges > 0
            assert stats.errorsTotal() == 0 and stats.lost == 0, stats
