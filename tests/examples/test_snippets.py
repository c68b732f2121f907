"""
The code the README and the guide quote from the examples is the examples' code,
line for line: a snippet that no longer matches fails here, not in a user's hands.
"""

from __future__ import annotations

import re
import textwrap

import pytest

from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").rglob("*.py"))
DOCUMENTS = [ROOT / "README.rst", ROOT / "docs" / "howto-own-protocol.rst"]


def codeBlocks(text: str) -> list[str]:
    """
    The literal blocks (after C{::}) of reStructuredText C{text}, dedented.
    """
    blocks = []
    for match in re.finditer(r"::\n\n((?:[ ]+.*\n|\n)+)", text):
        blocks.append(textwrap.dedent(match.group(1)).strip("\n"))
    return blocks


def quoted(document: str) -> list[str]:
    """
    The blocks of C{document} that are Python definitions (the examples' code);
    of the README, its section on one's own server only ("Your own server").
    """
    text = (ROOT / document).read_text()
    if document == "README.rst":
        start = text.index("Your own server\n====")
        text = text[start : text.index("\n====", start + 40)]
    return [b for b in codeBlocks(text) if re.search(r"^\s*(def|class|#) ", b, re.M)]


@pytest.mark.parametrize("document", ["README.rst", "docs/howto-own-protocol.rst"])
def test_snippetsAreTheExamplesCode(document: str) -> None:
    sources = [textwrap.dedent(path.read_text()) for path in EXAMPLES]
    dedented = [
        "\n".join(
            line[4:] if line.startswith("    ") else line for line in s.split("\n")
        )
        for s in sources
    ]
    blocks = [b for b in quoted(document) if "txflip" in b or "deferLater" in b]
    if document == "docs/howto-own-protocol.rst":
        assert len(blocks) >= 4, blocks
    for block in blocks:
        assert any(block in source for source in sources + dedented), block
