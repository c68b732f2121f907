"""
The zygote's freshness: whether what it imported is still what a fresh
interpreter would import.

With C{txflip run --warm} (the default; L{txflip.run._preload}), one
interpreter, the I{zygote}, imports what every generation's template imports
before the application -- Twisted, twisted.web, txflip, the endpoint-parser
plugins -- and each generation's template is forked from it, then imports the
application anew.  An upgrade then costs a fork and the application's own
imports instead of an interpreter's start.  The price is that the zygote's
modules are not loaded again: they must be what loading them again would give.
So at every fork the zygote compares, with what they were when it had
imported them, every file its modules came from (source, bytecode, extension:
inode, size and modification time), and the importable names (modules,
packages, C{.pth} files, distributions) in every directory of a package it
imported (a module or plugin added) and on C{sys.path} (a distribution
installed or removed).  It does so once the template is forked, while the
template imports the application, which waits for the verdict before it says
anything (L{txflip.run._template.serve}): any difference, and the template is
killed unheard, and a fresh zygote replaces the stale one.

What it cannot see: a module that read something other than code on import (a
data file, the time) -- the application's own modules are not the zygote's, and
always load anew.  Standard library only: it runs in the zygote.
"""

from __future__ import annotations

import os
import stat
import sys
from importlib.machinery import all_suffixes
from typing import NamedTuple

#: The environment variable that tells the zygote when the supervisor started it
#: (C{time.time_ns()}), before any of its imports.
SINCE = "TXFLIP_ZYGOTE_SINCE"
#: Names in a directory that change what an import finds there: modules,
#: extensions, packages, distributions' metadata, and the files that extend
#: C{sys.path} (whose contents count too: each is stamped as a file).
_IMPORTABLE = all_suffixes()
_METADATA = (".dist-info", ".egg-info", ".egg")
_PATH_FILES = (".pth", ".egg-link")


class _Directory(NamedTuple):
    """
    A directory's stamp: its modification time, and what in it an import could
    find, which is what counts (a log or a pid file written there changes the
    time); the time spares reading it again while it is the same.
    """

    mtime: int
    names: frozenset[str]


#: A file's stamp is its inode, size and modification time (L{None}: absent).
Stamp = tuple[int, int, int] | _Directory | None


class Stamps(dict[str, Stamp]):
    """
    Every path the loaded modules came from, and its stamp.

    @ivar loaded: how many modules were loaded, and from which C{sys.path}, as
        it was taken: while both are the same, so are the paths (a C{.pth} file
        added changes its directory's stamp), and L{changed} need not visit
        every module again.  In a zygote that visit is dear: its templates
        share its pages, and touching a module copies its page (about 5 ms of
        every upgrade here, for some 700 modules).
    """

    loaded: tuple[int, tuple[str, ...]] = (0, ())


def _loaded() -> tuple[int, tuple[str, ...]]:
    return len(sys.modules), tuple(sys.path)


def _importable(name: str) -> bool:
    if name.endswith(_METADATA + _PATH_FILES):
        return True
    for suffix in _IMPORTABLE:
        if name.endswith(suffix):
            return name[: -len(suffix)].isidentifier()
    return name.isidentifier() and name != "__pycache__"


def _stamp(path: str, before: Stamp = None) -> Stamp:
    try:
        st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            return (st.st_ino, st.st_size, st.st_mtime_ns)
        if isinstance(before, _Directory) and before.mtime == st.st_mtime_ns:
            return before
        return _Directory(
            st.st_mtime_ns, frozenset(filter(_importable, os.listdir(path)))
        )
    except OSError:
        return None


def _same(now: Stamp, before: Stamp) -> bool:
    if isinstance(now, _Directory) and isinstance(before, _Directory):
        return now.names == before.names
    return now == before


def _siteDirectories() -> list[str]:
    """
    Where C{site} reads C{.pth} files, whether they exist yet or not.
    """
    try:
        import site

        return [*site.getsitepackages(), site.getusersitepackages()]
    except AttributeError:  # an old virtualenv's site module
        return []


def _paths() -> set[str]:
    directories = {os.path.abspath(entry or os.curdir) for entry in sys.path}
    paths = {*directories, *_siteDirectories()}
    for directory in directories:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        paths.update(
            os.path.join(directory, n) for n in names if n.endswith(_PATH_FILES)
        )
    for module in list(sys.modules.values()):
        # Its own attributes only, past any __getattr__ or lazy module's
        # __getattribute__, which may import more.
        try:
            attributes = object.__getattribute__(module, "__dict__")
        except AttributeError:
            continue
        where = attributes.get("__file__")
        if isinstance(where, str):
            paths.add(where)
        for directory in attributes.get("__path__") or ():
            if isinstance(directory, str):
                paths.add(directory)
    return paths


def fingerprint() -> Stamps:
    """
    Every path the loaded modules came from, and its stamp.
    """
    loaded = _loaded()
    stamps = Stamps((path, _stamp(path)) for path in _paths())
    stamps.loaded = loaded
    return stamps


def settled(stamps: Stamps, since: int) -> bool:
    """
    Whether no file of C{stamps} was modified after C{since} (C{time.time_ns()}
    before the imports began): one that was may have been imported half
    written, or before the change its stamp records (a C{pip install} running
    meanwhile); such a zygote must not be kept.
    """
    margin = 10_000_000  # a file system's clock is coarser than ours
    return not any(
        stamp is not None
        and not isinstance(stamp, _Directory)
        and stamp[2] >= since - margin
        for stamp in stamps.values()
    )


def changed(before: Stamps) -> str | None:
    """
    A path that changed since C{before} was taken (or that a module loaded since
    came from), if any.
    """
    paths = before if before.loaded == _loaded() else _paths()
    for path in sorted(paths):
        if path not in before or not _same(_stamp(path, before[path]), before[path]):
            return path
    return None
