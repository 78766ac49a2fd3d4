"""Where the module's data files are (presets, terminology, the model manifest and the shipped models).

In the source tree and inside Slicer they are ``Resources/`` beside this library (Slicer installs a scripted
module's resources there). A pip installation packages the same folder as ``LiverTumorSegLib/_resources``
(``pyproject.toml`` maps it), so the command line works from a wheel too.
"""

from __future__ import annotations

from pathlib import Path

LIBRARY_DIR = Path(__file__).resolve().parent
LIBRARY_PARENT = LIBRARY_DIR.parent  # the folder that holds LiverTumorSegLib/ (a worker's import root)


def _resources_dir() -> Path:
    for candidate in (LIBRARY_PARENT / "Resources", LIBRARY_DIR / "_resources"):
        if (candidate / "Models" / "models.json").is_file():
            return candidate
    return LIBRARY_PARENT / "Resources"  # missing files then fail with this path in the message


RESOURCES_DIR = _resources_dir()
MODELS_DIR = RESOURCES_DIR / "Models"
MANIFEST_FILE = MODELS_DIR / "models.json"
SCHEMA_FILE = MODELS_DIR / "models-schema.json"
PRESETS_FILE = RESOURCES_DIR / "hu_window_presets.json"
TERMINOLOGY_FILE = RESOURCES_DIR / "segment_terminology.json"
REQUIREMENTS_FILE = RESOURCES_DIR / "requirements.txt"  # what the worker needs in Slicer's Python
MINIMUM_SLICER_VERSION = (5, 12)  # slicer.packaging.pip_ensure, pydicom 3 bundled; stated in README and CMake
