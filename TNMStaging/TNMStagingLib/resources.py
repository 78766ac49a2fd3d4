"""Where the TNMStaging module's data files are (the demo staging model and its card).

``Resources/`` beside this library in the source tree and inside Slicer; ``TNMStagingLib/_resources`` in a pip
installation (``pyproject.toml`` maps it).
"""

from __future__ import annotations

from pathlib import Path

LIBRARY_DIR = Path(__file__).resolve().parent
MODULE_FOLDER = LIBRARY_DIR.parent  # the folder that holds TNMStagingLib/ (the staging worker's import root)


def _resources_dir() -> Path:
    for candidate in (MODULE_FOLDER / "Resources", LIBRARY_DIR / "_resources"):
        if (candidate / "Models" / "demo_staging.tnm").is_file():
            return candidate
    return MODULE_FOLDER / "Resources"


RESOURCES_DIR = _resources_dir()
DEMO_MODEL_FILE = RESOURCES_DIR / "Models" / "demo_staging.tnm"
REQUIREMENTS_FILE = RESOURCES_DIR / "requirements.txt"  # what the staging worker adds in Slicer's Python
