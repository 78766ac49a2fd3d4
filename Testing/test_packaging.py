"""A non-editable ``pip install .`` gives working commands: the data files (presets, terminology, model manifest,
demo models, demo staging model) travel with the packages.

The project is installed without dependencies into a fresh virtual environment; its dependencies come from the
test environment's site-packages on ``PYTHONPATH`` (no ``.pth`` files are processed there, so this test
environment's editable install cannot leak in). Each command runs from an empty folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("wheel_install")
    environment = root / "venv"
    venv.create(environment, with_pip=False)
    python = environment / "bin" / "python"
    source = root / "source"  # a clean copy: a build/ folder left in the checkout could add stale files
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "demo_output"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    build = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(root / "dist"),
                            str(source)], capture_output=True, text=True, cwd=root, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next((root / "dist").glob("livertumoranalysis-*.whl"))
    install = subprocess.run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)],
                             capture_output=True, text=True, cwd=root, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"], "PYTHONNOUSERSITE": "1"}
    env.pop("VIRTUAL_ENV", None)
    return environment, env


def _run(installed, command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    environment, env = installed
    return subprocess.run([str(environment / "bin" / command[0]), *command[1:]], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_the_installed_library_is_the_wheel_copy(installed, tmp_path):
    environment, env = installed
    result = subprocess.run([str(environment / "bin" / "python"), "-c",
                             "import LiverTumorSegLib.resources as r, TNMStagingLib.resources as t; "
                             "print(r.RESOURCES_DIR); print(t.RESOURCES_DIR)"],
                            capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        assert str(environment) in line and line.endswith("_resources"), line


def test_models_list_phantom_and_rules_work_from_the_wheel(installed, tmp_path):
    models = _run(installed, ["livertumor", "models", "list"], tmp_path)
    assert models.returncode == 0, models.stderr
    rows = [json.loads(line) for line in models.stdout.splitlines()]
    demo = {row["id"]: row for row in rows}["demo-liver-segresnet"]
    assert demo["available"], demo  # the shipped demo model file is found and verified

    phantom = _run(installed, ["livertumor", "phantom", "--out", str(tmp_path / "ph"), "--size", "64",
                               "--slice-thickness-mm", "5", "--seed", "3"], tmp_path)
    assert phantom.returncode == 0, phantom.stderr
    assert len(list((tmp_path / "ph" / "dicom").glob("*.dcm"))) > 10

    rules = _run(installed, ["tnmstaging", "rules", "--diameters-mm", "18"], tmp_path)
    assert rules.returncode == 0, rules.stderr
    assert json.loads(rules.stdout)["stage"] == "IA"
