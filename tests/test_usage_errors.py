"""
A usage error under twistd or twist is one line on stderr, with a pointer to the
C{--help} that has the usage, not the whole usage (26 lines for flipecho) or, for
the C{flip} plugin, the list of every installed plugin (70 lines) before it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import oneLineError, runTwistd, twistdCommand


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["flipecho", "--listen", "bogus:1"],
            "txflip: bad listen description 'bogus:1': unknown kind 'bogus' (txflip"
            " can hand over tcp, tcp6, unix, udp and udp6, and use systemd's)"
            " (see twistd flipecho --help)",
        ),
        (
            ["flip", "nosuchplugin"],
            "txflip: Unknown command: nosuchplugin (see twistd flip --help)",
        ),
        (
            ["flip"],
            "txflip: which plugin should flip run? e.g. twistd -n flip web --listen"
            " flip:tcp:8080 --path . (see twistd flip --help)",
        ),
        (
            ["flip", "web", "--no-such-option"],
            "txflip: option --no-such-option not recognized"
            " (see twistd flip web --help)",
        ),
        (
            ["flipecho", "--idle-grace", "soon"],
            "txflip: Parameter type enforcement failed: --idle-grace must be a finite"
            " number of seconds >= 0.001, not 'soon' (see twistd flipecho --help)",
        ),
    ],
    ids=["bad-listen", "unknown-plugin", "no-plugin", "plugin-option", "duration"],
)
def test_usageErrorIsOneLine(tmp_path: Path, args: list[str], line: str) -> None:
    result = runTwistd(["-n", *args], tmp_path)
    assert oneLineError(result) == line
    assert result.stdout == ""
    assert result.returncode == 1
    assert list(tmp_path.iterdir()) == []


def test_twistUsageErrorIsOneLine(tmp_path: Path) -> None:
    """
    twist prints its usage after the error; with ours, there is only the error.
    """
    python, twistd = twistdCommand()
    twist = [python, str(Path(twistd).with_name("twist"))]
    result = runTwistd(["flipecho", "--listen", "bogus:1"], tmp_path, twistd=twist)
    line = oneLineError(result)
    assert line.startswith("txflip: bad listen description 'bogus:1'")
    assert line.endswith("(see twist flipecho --help)")
    assert result.stdout == ""


def test_helpStillPrintsTheUsage(tmp_path: Path) -> None:
    result = runTwistd(["flipecho", "--help"], tmp_path)
    assert result.returncode == 0
    assert "--listen=" in result.stdout
    assert result.stderr == ""
