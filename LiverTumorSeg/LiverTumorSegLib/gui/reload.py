""""Reload and Test" for a module whose code lives in a library package (no Qt needed)."""

from __future__ import annotations

import sys


def forget_package(*packages: str) -> list[str]:
    """Remove ``packages`` and all their submodules from ``sys.modules`` so that the next import reads the
    files again (Slicer's reload re-imports only the module file itself). Returns the names removed."""
    names = [name for name in sys.modules
             if any(name == package or name.startswith(package + ".") for package in packages)]
    for name in names:
        del sys.modules[name]
    return names
