"""
A stand-in for a real application in C{bench.workers --app bench.bigapp.Hello}:
bench.hello's answer, behind what a Django or Flask application does at import:
sixteen standard-library modules (and what they import) and a table built in
memory (about 50 MB, 0.3 s), so that what preloading shares, and what each
worker would otherwise import on its own, shows in the figures.
"""

from __future__ import annotations

import argparse  # noqa: F401 - imported for their cost, as an application would
import asyncio  # noqa: F401
import csv  # noqa: F401
import decimal  # noqa: F401
import difflib  # noqa: F401
import email.mime.multipart  # noqa: F401
import fractions  # noqa: F401
import http.server  # noqa: F401
import logging.handlers  # noqa: F401
import pydoc  # noqa: F401
import sqlite3  # noqa: F401
import statistics  # noqa: F401
import tarfile  # noqa: F401
import unittest  # noqa: F401
import xml.etree.ElementTree  # noqa: F401
import zipfile  # noqa: F401

from bench.hello import Hello as Hello

#: An application's import-time data: routes, models, translations, templates.
TABLE = {i: (str(i) * 3, [i, i + 1.5]) for i in range(150_000)}
