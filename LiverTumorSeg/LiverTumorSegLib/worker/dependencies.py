"""Python packages the workers need in Slicer's Python, and which of them are missing (the packages themselves are
never imported here: ``importlib.metadata`` and ``packaging`` read what is installed).

Inside Slicer the module installs what is missing on the first Run, after asking, the way the scripted-module
template does: torch (and torchvision) through the PyTorch extension's ``PyTorchUtils`` with at least
``MINIMUM_TORCH`` (it picks the build for the machine's GPU), then each module's ``Resources/requirements.txt``
with ``slicer.packaging.pip_ensure``, which compares versions, not only presence (``gui.dependencies``).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable
from pathlib import Path

MINIMUM_TORCH = "2.2"  # pyproject.toml's ml extra: torch>=2.2 (torchvision>=0.17 comes with it)


def read_requirements(path: str | Path) -> list[str]:
    """The requirement lines of a requirements file (comments, blank lines and pip options left out), as
    ``slicer.packaging.load_requirements`` reads them."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (pip name), or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def unsatisfied(requirements: Iterable[str]) -> list[str]:
    """The requirements that are not installed in a version they accept (markers that do not apply are met)."""
    from packaging.requirements import Requirement

    missing = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = installed_version(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(line)
    return missing


def torch_action(installed: str | None, minimum: str = MINIMUM_TORCH) -> str:
    """What to do about torch: ``"ok"``, ``"install"`` (none yet: PyTorchUtils installs one >= ``minimum``) or
    ``"upgrade"`` (older than ``minimum``; a local build label such as ``+cu121`` is ignored)."""
    from packaging.version import Version

    if installed is None:
        return "install"
    return "upgrade" if Version(installed.split("+")[0]) < Version(minimum) else "ok"
