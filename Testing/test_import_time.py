"""Slicer imports both module files at start-up: what they import at module level must be light.

The library modules each module file imports at its top level are imported in a fresh interpreter (after ``slicer``
and ``vtk``, which Slicer has loaded before any module): together in under 0.5 s, and without torch, MONAI,
pydicom, scipy, Pillow, scikit-learn, XGBoost, Segment Anything, SimpleITK or the phantom code in ``sys.modules``.
The rest of the library is imported when the module is first shown or used.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_FILES = [REPO / "LiverTumorSeg" / "LiverTumorSeg.py", REPO / "TNMStaging" / "TNMStaging.py"]
HEAVY = ("torch", "monai", "pydicom", "scipy", "PIL", "sklearn", "xgboost", "segment_anything", "SimpleITK",
         "LiverTumorSegLib.synthetic")
LIBRARIES = ("LiverTumorSegLib", "TNMStagingLib")
BUDGET_S = 0.5


def top_level_library_imports(path: Path) -> list[str]:
    """The library modules a module file imports outside functions and classes."""
    modules = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
            modules.append(node.module)
        elif isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names if alias.name.split(".")[0] in LIBRARIES]
    return modules


PROBE = """
import importlib, json, sys, time
import slicer, vtk  # loaded by Slicer before any module
modules = json.loads(sys.argv[1])
start = time.perf_counter()
for name in modules:
    importlib.import_module(name)
seconds = time.perf_counter() - start
heavy = json.loads(sys.argv[2])
print(json.dumps({"seconds": seconds, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in heavy
                                                        or any(m == h or m.startswith(h + ".") for h in heavy))}))
"""


def test_module_files_import_only_light_library_modules_at_start_up():
    modules = sorted({module for path in MODULE_FILES for module in top_level_library_imports(path)})
    assert modules, "the module files import nothing of the libraries at start-up?"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "LiverTumorSeg"), str(REPO / "TNMStaging"),
                                                         os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(modules), json.dumps(HEAVY)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["loaded"] == [], f"heavy modules loaded at start-up by {modules}: {probe['loaded']}"
    assert probe["seconds"] < BUDGET_S, f"importing {modules} took {probe['seconds']:.2f} s"
