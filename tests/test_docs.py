"""
The documentation says what the code does: every public name of C{txflip} has an
entry in the API reference, and every option the command reference documents is
in that command's C{--help}, and the other way round.

The pages are read as text (C{.. program::}, C{.. option::}, C{.. auto*::}
directives), so these tests need no Sphinx; C{.ci/docs} builds the site itself,
with warnings as errors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import txflip
from tests.conftest import ROOT, twistdCommand

DOCS = ROOT / "docs"
COMMANDS = {
    "twistd flipecho": [*twistdCommand(), "flipecho", "--help"],
    "twistd flip": [*twistdCommand(), "flip", "--help"],
    "txflip run": [sys.executable, "-m", "txflip", "run", "--help"],
    "txflip upgrade": [sys.executable, "-m", "txflip", "upgrade", "--help"],
    "txflip status": [sys.executable, "-m", "txflip", "status", "--help"],
    "txflip check": [sys.executable, "-m", "txflip", "check", "--help"],
}
_DIRECTIVE = re.compile(r"^\.\. (program|option):: (.+)$")
_OPTION = re.compile(r"(?<![\w-])(--?\w[\w-]*)")
# An option's line in --help: argparse indents it by 2, twistd by 2 ("-l, --x=")
# or 6 ("--x="); a description's continuation lines are indented further.
_HELP_LINE = re.compile(r"^(?: {2}-| {6}--)(.*)$")


def documentedOptions() -> dict[str, set[str]]:
    """
    The options C{reference-commands.rst} documents, by program.
    """
    options: dict[str, set[str]] = {}
    program = None
    for line in (DOCS / "reference-commands.rst").read_text().splitlines():
        directive = _DIRECTIVE.match(line)
        if directive and directive.group(1) == "program":
            program = directive.group(2).strip()
            options.setdefault(program, set())
        elif directive:
            assert program is not None, f"an option before any program: {line}"
            for variant in directive.group(2).split(", "):
                options[program].add(variant.split()[0].split("=")[0])
    return options


def helpOptions(argv: list[str]) -> set[str]:
    """
    The options a command's C{--help} lists.
    """
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result
    options: set[str] = set()
    for line in result.stdout.splitlines():
        if _HELP_LINE.match(line):
            column = re.split(r"\s{2,}", line.strip())[0]
            options.update(_OPTION.findall(column))
    assert options, result.stdout
    return options


def test_everyCommandIsDocumented() -> None:
    assert set(documentedOptions()) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_documentedOptionsAreTheHelpOptions(command: str) -> None:
    documented = documentedOptions()[command]
    helped = helpOptions(COMMANDS[command])
    assert documented - helped == set(), f"documented, not in {command} --help"
    assert helped - documented == set(), f"in {command} --help, not documented"


def test_everyPublicNameHasAReferenceEntry() -> None:
    text = (DOCS / "reference-api.rst").read_text()
    entries = set(re.findall(r"^\.\. (?:auto|py:)\w+:: txflip\.(\w+)\b", text, re.M))
    assert set(txflip.__all__) - entries == set()


def test_everyReferencedNameExists() -> None:
    """
    An entry for a name that is gone would build as an empty entry (autodoc
    warns, but only when the site is built): fail here too.
    """
    text = (DOCS / "reference-api.rst").read_text()
    for module, name in re.findall(
        r"^\.\. auto\w+:: (txflip(?:\.\w+)*)\.(\w+)\b", text, re.M
    ):
        imported = __import__(module, fromlist=[name])
        assert hasattr(imported, name), f"{module}.{name}"


README = ROOT / "README.rst"
QUICK_START = (
    "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/twistd -n flipecho",
    "python3 -m venv .venv && .venv/bin/pip install '.[test]'"
    " && .venv/bin/python -m pytest",
)


def test_readmeIsTheFrontDoor() -> None:
    """
    The README stays short (what is long goes to the docs), keeps the two
    quick-start commands verbatim (CI runs the second, and it is the README's only
    test command), and every page it links to exists.
    """
    text = README.read_text()
    assert len(text.splitlines()) < 400
    for command in QUICK_START:
        assert text.count(command) == 1, command
    assert text.count("-m pytest") == 1
    links = re.findall(r"<((?:docs/)?[\w-]+\.rst)>`_", text)
    assert links
    for link in links:
        assert (ROOT / link).is_file(), link
