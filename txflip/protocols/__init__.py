"""
Protocol families that drain or move without knowing txflip: one module each.

A family's adapters are registered the first time something adapts a protocol to
L{txflip.IDrainable} or L{txflip.IMovable} and finds no adapter (a zope
adapter hook), once the module
that defines the family's protocols is imported: a protocol of that family cannot
exist before its module does, and a server that never imports it (an echo server
and twisted.web, say) never pays for it (C{import txflip} stays small, and a new
generation ready sooner).  Adding a family is one line in L{FAMILIES}.
"""

from __future__ import annotations

import sys
from importlib import import_module

from zope.interface.interface import InterfaceClass, adapter_hooks

#: Each family: the module that defines its protocols, and txflip's modules that
#: register adapters for them (with C{twisted.python.components.registerAdapter}).
FAMILIES: dict[str, tuple[str, ...]] = {
    "twisted.web.http": ("txflip.protocols._web", "txflip.protocols._webmove"),
    "twisted.protocols.basic": ("txflip.protocols._basic",),
    "twisted.web._http2": ("txflip.protocols._h2",),
    "autobahn.twisted.websocket": (
        "txflip.protocols._websocket",
        "txflip.protocols._wsmove",
    ),
}
_registered: set[str] = set()
_interfaces: set[InterfaceClass] = set()


def registerImported() -> bool:
    """
    Register the adapters of every family whose protocols' module is imported.

    @return: whether any family was registered by this call.
    """
    fresh = [f for f in FAMILIES if f not in _registered and f in sys.modules]
    for family in fresh:
        _registered.add(family)
        for name in FAMILIES[family]:
            import_module(name)
    return bool(fresh)


def adaptedLazily(interface: InterfaceClass) -> None:
    """
    Adapting to C{interface} registers the families imported since, if no
    adapter is found at first (a hook of zope's, after Twisted's own registry).
    """
    if not _interfaces:
        adapter_hooks.append(_lookAgain)
    _interfaces.add(interface)


def _lookAgain(interface: InterfaceClass, obj: object) -> object | None:
    if interface in _interfaces and registerImported():
        found: object | None = interface(obj, None)
        return found
    return None
