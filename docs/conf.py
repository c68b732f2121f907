"""
Sphinx configuration of txflip's documentation (built by C{.ci/docs}, with
warnings as errors).
"""

import os
import sys
from importlib.metadata import PackageNotFoundError, version

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

project = "txflip"
author = "the txflip authors"
copyright = "2026, the txflip authors"
try:
    release = version("txflip")
except PackageNotFoundError:  # built from a checkout without installing it
    release = "unreleased"
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinxcontrib.mermaid",
    # txflip's docstrings are epytext (Twisted's convention): see _ext/epytext.py.
    "epytext",
    "zopeinterfaces",
]

exclude_patterns = ["_build"]
# Plain ``text`` in these pages is a literal, as in the docstrings' C{...}.
default_role = "literal"
nitpicky = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"

# Mermaid diagrams are drawn in the reader's browser: no binary at build time.
mermaid_version = "11.4.1"

html_theme = "furo"
html_title = f"txflip {release}"
html_static_path: list[str] = []
