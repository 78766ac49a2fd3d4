"""Python packages the worker needs, and which of them are missing (no import of the packages themselves).

Inside Slicer the module installs what is missing on the first Run, after asking: torch through the
PyTorch extension (which picks the build for the machine's GPU), the rest with ``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib.util

# import name -> pip requirement (lower bounds as in pyproject.toml)
WORKER_REQUIREMENTS = {
    "torch": "torch>=2.2",
    "monai": "monai>=1.4",
    "SimpleITK": "SimpleITK>=2.3",
    "pydicom": "pydicom>=3.0",
    "pylibjpeg": "pylibjpeg>=2.0",
    "libjpeg": "pylibjpeg-libjpeg>=2.1",
    "openjpeg": "pylibjpeg-openjpeg>=2.3",
    "rle": "pylibjpeg-rle>=2.0",
    "scipy": "scipy>=1.11",
    "PIL": "pillow>=10.1",
    "highdicom": "highdicom>=0.23",  # DICOM SEG and SR of the results (io.dicom_seg, io.dicom_sr)
}

# The staging worker (TNMStaging) needs the segmentation worker's packages plus these.
STAGING_REQUIREMENTS = {
    **WORKER_REQUIREMENTS,
    "torchvision": "torchvision>=0.17",
    "segment_anything": "segment-anything>=1.0",
    "sklearn": "scikit-learn>=1.4",
    "xgboost": "xgboost>=3.2",
}

# Installed with torch by the PyTorch extension (it picks the builds that match the machine's GPU).
PYTORCH_EXTENSION_PACKAGES = ("torch", "torchvision")


def missing_modules(requirements: dict[str, str] | None = None) -> list[str]:
    """Import names of the requirements that cannot be found, in declaration order."""
    requirements = WORKER_REQUIREMENTS if requirements is None else requirements
    return [name for name in requirements if importlib.util.find_spec(name) is None]


def pip_requirements(module_names: list[str], requirements: dict[str, str] | None = None) -> list[str]:
    """The pip requirement strings for ``module_names`` (torch and torchvision excluded: the PyTorch
    extension installs them)."""
    requirements = WORKER_REQUIREMENTS if requirements is None else requirements
    return [requirements[name] for name in module_names if name not in PYTORCH_EXTENSION_PACKAGES]


def pytorch_extension_torch_requirement(module_names: list[str], installed_torch_version: str | None) -> str | None:
    """The torch version requirement to hand to the PyTorch extension's ``installTorch`` (which installs
    torch *and* torchvision), or None when neither is missing.

    No torch yet: ``""`` (the extension picks the newest build for the machine's GPU). torch present but
    torchvision missing: ``"==<installed release>"`` so that only the matching torchvision is added and the
    installed torch (e.g. ``2.5.1+cu121``; the local build label is dropped) is kept.
    """
    if not set(module_names) & set(PYTORCH_EXTENSION_PACKAGES):
        return None
    if installed_torch_version is None or "torch" in module_names:
        return ""
    return "==" + installed_torch_version.split("+")[0]
