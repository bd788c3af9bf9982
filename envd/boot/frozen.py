"""Give children the environment envd was started with, not the frozen bundle's.

PyInstaller's bootloader puts its private library directory first in
`LD_LIBRARY_PATH` (keeping the caller's value in `LD_LIBRARY_PATH_ORIG`) and
passes its own state in `_PYI_*` variables. A child
that inherited them would load the bundle's libssl, libz, ... instead of the
image's and could break in odd ways, and would leak our internals into user
commands. The daemon calls `restore_environment` before anything can spawn.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

# Variables the loaders set, each with the suffix under which the caller's value is kept.
_SAVED_SUFFIX = "_ORIG"
_LOADER_VARS = ("LD_LIBRARY_PATH",)
_PRIVATE_PREFIXES = ("_PYI_", "_MEIPASS")


def is_frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def restore(environ: MutableMapping[str, str]) -> None:
    """Undo the bootloaders' changes in `environ`, in place."""
    for name in _LOADER_VARS:
        saved = environ.pop(name + _SAVED_SUFFIX, None)
        if saved is not None:
            environ[name] = saved
        else:
            environ.pop(name, None)
    for name in [n for n in environ if n.startswith(_PRIVATE_PREFIXES)]:
        del environ[name]


def restore_environment() -> None:
    """In a frozen bundle, restore the original environment (no-op otherwise:
    a user's own `LD_LIBRARY_PATH` must then be kept)."""
    if is_frozen():
        restore(os.environ)
