"""
Render txflip's epytext docstrings (Twisted's convention) with Sphinx's autodoc.

The docstrings stay epytext, for pydoctor and for readers of the source; this
converts, as autodoc reads them, the few constructs they use into reStructuredText:
C{code}, I{italic}, B{bold}, U{url}, L{name} and L{text <name>} (a cross-reference
to a Python object), and the fields @param, @type, @return, @rtype, @raise, @ivar,
@cvar, @var, @note and @see.  Anything else passes through unchanged, so an
unknown construct shows up in the built page rather than vanishing.
"""

from __future__ import annotations

import re
from typing import Any

_FIELDS = {
    "param": "param",
    "type": "type",
    "keyword": "keyword",
    "return": "returns",
    "returns": "returns",
    "rtype": "rtype",
    "raise": "raises",
    "raises": "raises",
    "ivar": "ivar",
    "cvar": "cvar",
    "var": "var",
}
_FIELD = re.compile(r"^(\s*)@(\w+)(\s+[^:]+)?:\s?(.*)$")
_MARKUP = re.compile(r"([CIBUL])\{")
_NESTED = re.compile(r"[CIBUL]\{([^{}]*)\}")
_TARGET = re.compile(r"^(.*?)\s*<([^<>]+)>$", re.DOTALL)


def _closing(text: str, start: int) -> int:
    """
    The index of the brace closing the one before C{start}, or -1.
    """
    depth = 1
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
    return -1


def _literal(text: str) -> str:
    if not text.strip():
        return text
    # A literal that begins or ends with a space, or holds a backquote, would
    # confuse reStructuredText's ``...``: the interpreted-text role does not.
    if text != text.strip() or "`" in text:
        return ":literal:`" + text.replace("\\", "\\\\").replace("`", "\\`") + "`"
    return f"``{text}``"


def _inline(kind: str, body: str) -> str:
    if kind == "C":
        # Markup inside a literal (C{f(L{x})}) cannot be rendered: keep its text.
        return _literal(_NESTED.sub(r"\1", body))
    if kind == "I":
        return f"*{inline(body)}*"
    if kind == "B":
        return f"**{inline(body)}**"
    if kind == "U":
        return f"`{body} <{body}>`__"
    target = _TARGET.match(body)
    if target:
        return f":py:obj:`{target.group(1)} <{target.group(2).strip()}>`"
    return f":py:obj:`{body}`"


def inline(text: str) -> str:
    """
    C{text} with its epytext inline markup converted; nested braces are kept.
    """
    out: list[str] = []
    position = 0
    while match := _MARKUP.search(text, position):
        end = _closing(text, match.end())
        if end < 0:
            break
        before = text[position : match.start()]
        out.append(before)
        converted = _inline(match.group(1), text[match.end() : end])
        # reStructuredText needs inline markup to stand apart from words.
        if before and not before[-1].isspace() and before[-1] not in "(['\"/-":
            converted = "\\ " + converted
        after = text[end + 1 : end + 2]
        if after and (after.isalnum() or after == "_"):
            converted += "\\ "
        out.append(converted)
        position = end + 1
    out.append(text[position:])
    return "".join(out)


def convert(lines: list[str]) -> list[str]:
    """
    Epytext docstring lines as reStructuredText lines.
    """
    out: list[str] = []
    inFields = False
    for line in inline("\n".join(lines)).split("\n"):
        field = _FIELD.match(line)
        name = field.group(2) if field else ""
        if field and name in _FIELDS:
            indent, _, argument, rest = field.groups()
            head = f"{_FIELDS[name]} {(argument or '').strip()}".strip()
            # A field list needs a blank line before it.
            if not inFields and out and out[-1].strip():
                out.append("")
            inFields = True
            out.append(f"{indent}:{head}: {rest}".rstrip())
        elif field and name in ("note", "see"):
            directive = "note" if name == "note" else "seealso"
            out.extend(["", f"{field.group(1)}.. {directive}:: {field.group(4)}"])
            inFields = False
        else:
            if line.strip() and not line[:1].isspace():
                inFields = False
            out.append(line)
    return out


def _processDocstring(
    app: Any, what: str, name: str, obj: object, options: Any, lines: list[str]
) -> None:
    lines[:] = convert(lines)


def setup(app: Any) -> dict[str, object]:
    app.connect("autodoc-process-docstring", _processDocstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
