"""
L{txflip._lean}: which command lines make a supervisor that keeps TLS out.  (That
it does, through a real run, is in C{tests/run/test_run.py}.)
"""

from __future__ import annotations

import pytest

from txflip._lean import keepsTLSOut

PYTHON = "/venv/bin/python"


@pytest.mark.parametrize(
    ("argv", "origArgv"),
    [
        (["-m", "run", "--", "twistd"], [PYTHON, "-m", "txflip", "run", "--", "twistd"]),
        (["-m", "run", "--workers", "2", "--", "x"], [PYTHON, "-X", "importtime", "-m", "txflip", "run"]),
        (["/venv/bin/txflip", "run", "--", "twistd"], [PYTHON, "/venv/bin/txflip", "run"]),
        (["txflip", "run", "--", "twistd", "--admin", "x"], [PYTHON, "txflip"]),
    ],
)  # fmt: skip
def test_plainSupervisor(argv: list[str], origArgv: list[str]) -> None:
    """
    C{txflip run}, as the script or C{python -m txflip}, keeps TLS out (after
    C{--}, an C{--admin} is the command's).
    """
    assert keepsTLSOut(argv, origArgv)


@pytest.mark.parametrize(
    ("argv", "origArgv"),
    [
        (["-m", "run", "--admin", "tcp:9100"], [PYTHON, "-m", "txflip", "run"]),
        (["-m", "run", "--adm=tcp:9100", "--", "x"], [PYTHON, "-m", "txflip", "run"]),
        (["txflip", "run", "--admin", "tcp:9100", "twistd"], [PYTHON, "txflip"]),
        (["-m", "run"], [PYTHON, "-m", "txflip.check", "run"]),
        (["-m", "run"], [PYTHON, "-m", "mytool", "run"]),
        (["/venv/bin/txflip", "status"], [PYTHON, "/venv/bin/txflip", "status"]),
        (["/venv/bin/twistd", "run"], [PYTHON, "/venv/bin/twistd", "run"]),
        (["-c"], [PYTHON, "-c", "import txflip"]),
    ],
)  # fmt: skip
def test_anythingElse(argv: list[str], origArgv: list[str]) -> None:
    """
    C{--admin} (or a prefix of it: its metrics need C{ssl}), another module's
    or program's C{run}, another subcommand: TLS stays available.
    """
    assert not keepsTLSOut(argv, origArgv)
