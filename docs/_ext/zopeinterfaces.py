"""
Document the methods and attributes of zope.interface interfaces.

autodoc sees an interface as a class without members: its methods are not Python
attributes but entries of the interface (C{iface.namesAndDescriptions()}).  This
appends them to the interface's docstring as C{py:method} and C{py:attribute}
entries, in the order they were declared, each with its own (epytext) docstring.
"""

from __future__ import annotations

from typing import Any

from epytext import convert
from zope.interface.interface import InterfaceClass, Method


def _entries(interface: InterfaceClass) -> list[str]:
    lines: list[str] = []
    # In the order of declaration: an interface keeps its elements in a dict.
    for name, description in interface.namesAndDescriptions(all=False):
        if isinstance(description, Method):
            head = f".. py:method:: {name}{description.getSignatureString()}"
        else:
            head = f".. py:attribute:: {name}"
        doc = (description.getDoc() or "").expandtabs().splitlines()
        body = convert(_dedent(doc))
        lines += ["", head, ""] + [f"   {line}".rstrip() for line in body]
    return lines


def _dedent(lines: list[str]) -> list[str]:
    """
    A docstring's lines without the indentation of all but the first.
    """
    rest = [line for line in lines[1:] if line.strip()]
    margin = min((len(line) - len(line.lstrip()) for line in rest), default=0)
    return [lines[0].strip(), *(line[margin:] for line in lines[1:])] if lines else []


def _processDocstring(
    app: Any, what: str, name: str, obj: object, options: Any, lines: list[str]
) -> None:
    if isinstance(obj, InterfaceClass):
        lines.extend(_entries(obj))


def setup(app: Any) -> dict[str, object]:
    app.setup_extension("epytext")
    app.connect("autodoc-process-docstring", _processDocstring, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
