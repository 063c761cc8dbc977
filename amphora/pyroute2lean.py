"""pyroute2's parts without pyroute2's ``__init__``.

``import pyroute2`` (or ``from pyroute2 import IPRoute``) runs the package's
``__init__``, which imports every part of the library: NDB (with sqlite3),
IPDB, conntrack, devlink, ethtool, IPVS, nl80211, WireGuard, plan9... about
190 modules and ~9 MiB of a process's memory, of which the agent uses four
classes. ``part("iproute.linux").IPRoute`` imports only
``pyroute2.iproute.linux`` and what it needs (~4 MiB less).

For that, the first call puts the package in ``sys.modules`` without
executing its ``__init__``; its submodules import normally. Code that later
asks the package itself for a name (``from pyroute2 import NDB``: tests, a
plugin, pyroute2's own lazy imports) gets the real ``__init__`` run then, in
the same module object, so both ways of importing keep working and share one
copy of every submodule. If ``pyroute2`` was already imported in full, this
module changes nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading

_lock = threading.RLock()


def _install_package() -> None:
    spec = importlib.util.find_spec("pyroute2")
    package = importlib.util.module_from_spec(spec)
    state = {"full": False}

    def __getattr__(name: str):
        # Submodules stay lazy: the import system imports them when this raises.
        if name.startswith("__") or importlib.util.find_spec(f"pyroute2.{name}") is not None:
            raise AttributeError(name)
        with _lock:
            if not state["full"]:
                state["full"] = True  # before: the __init__ may ask for names while it runs
                try:
                    spec.loader.exec_module(package)
                except BaseException:
                    state["full"] = False
                    raise
        try:
            return package.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}") from None

    package.__getattr__ = __getattr__
    sys.modules["pyroute2"] = package


def part(name: str):
    """The module ``pyroute2.<name>``, imported without the package's ``__init__``."""
    with _lock:
        if "pyroute2" not in sys.modules:
            _install_package()
    return importlib.import_module(f"pyroute2.{name}")
