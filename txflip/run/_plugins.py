"""
A preloaded worker's plugin lookups, answered from its template's scan.

twistd's option parsing and every endpoint description (C{flip:tcp:8080}) look
up plugins (C{twisted.plugin.getPlugins}), and each lookup scans every
C{twisted/plugins} directory on C{sys.path} again: it lists them, stats each
module and unpickles each C{dropin.cache}.  A worker made that scan three times
as it started (twistd's subcommands, the C{flip} plugin's, the endpoint's
parsers): about a third of its start's CPU, paid again by each worker.  A
worker forked from a template runs the modules the template imported; it sees
the plugins the template saw too: the template scans once (L{scan}), and its
workers' lookups read that scan (L{reuse}).

C{twisted.plugin} has no hook for this: C{getPlugins} calls its module's
C{getCache}, which a worker replaces.  This is txflip's one reach past Twisted's
public API here; L{reuse} fails loudly if C{getCache} is gone, and
C{tests/run/test_plugins.py} checks that C{getPlugins} still goes through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

#: What C{twisted.plugin.getCache} returned for C{twisted.plugins}.
Scan = Mapping[str, Any]


def scan() -> Scan:
    """
    Scan C{twisted.plugins} (in the template, once the application is
    imported: its directory is on C{sys.path} by then).
    """
    from twisted.plugin import getCache

    import twisted.plugins

    scanned: Scan = getCache(twisted.plugins)
    return scanned


def reuse(scanned: Scan) -> None:
    """
    Answer this process's lookups in C{twisted.plugins} with C{scanned} (in a
    worker, before twistd runs); other packages' lookups scan as before.
    """
    import twisted.plugin

    import twisted.plugins

    original = getattr(twisted.plugin, "getCache", None)
    if original is None:
        raise RuntimeError("twisted.plugin.getCache is gone: txflip needs updating")

    def getCache(module: ModuleType) -> Scan:
        return scanned if module is twisted.plugins else original(module)

    twisted.plugin.getCache = getCache
