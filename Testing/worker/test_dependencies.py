"""What the modules install into Slicer's Python: requirement files with version bounds that match pyproject.toml,
torch through PyTorchUtils with a minimum version, and a version-aware check of what is missing."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from LiverTumorSegLib import resources
from LiverTumorSegLib.worker import dependencies
from TNMStagingLib import resources as staging_resources

REPO = Path(__file__).resolve().parents[2]
REQUIREMENT_FILES = [resources.REQUIREMENTS_FILE, staging_resources.REQUIREMENTS_FILE]


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["ml"]
    return {Requirement(line).name.lower(): Requirement(line) for line in lines}


@pytest.mark.parametrize("path", REQUIREMENT_FILES, ids=lambda p: p.parent.parent.name)
def test_requirement_files_have_lower_bounds_that_match_pyproject_and_leave_torch_to_pytorchutils(path):
    declared = _pyproject_requirements()
    lines = dependencies.read_requirements(path)
    assert lines
    for line in lines:
        requirement = Requirement(line)
        lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        assert lower, f"{path.name}: {line} has no lower bound"
        assert requirement.name.lower() not in ("torch", "torchvision"), "torch comes through PyTorchUtils"
        pyproject_lower = [s.version for s in declared[requirement.name.lower()].specifier if s.operator == ">="]
        assert lower == pyproject_lower, f"{line} vs pyproject.toml {declared[requirement.name.lower()]}"
    torch_lower = [s.version for s in declared["torch"].specifier if s.operator == ">="]
    assert torch_lower == [dependencies.MINIMUM_TORCH]


def test_unsatisfied_compares_versions_not_presence(tmp_path):
    numpy = dependencies.installed_version("numpy")
    assert dependencies.unsatisfied([f"numpy>={numpy}"]) == []
    assert dependencies.unsatisfied(["numpy>=999"]) == ["numpy>=999"], "present but too old must count as missing"
    assert dependencies.unsatisfied(["no-such-package-xyz>=1"]) == ["no-such-package-xyz>=1"]
    assert dependencies.unsatisfied(['no-such-package-xyz>=1; sys_platform == "no-such-platform"']) == []
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\n\n-c constraints.txt\nmonai>=1.4,<2  # why\n")
    assert dependencies.read_requirements(path) == ["monai>=1.4,<2"]


def test_torch_action():
    assert dependencies.torch_action(None) == "install"
    assert dependencies.torch_action("2.1.2+cu118") == "upgrade"
    assert dependencies.torch_action("2.5.1+cu121") == "ok"
    assert dependencies.torch_action(dependencies.MINIMUM_TORCH) == "ok"


def test_everything_the_workers_need_is_installed_in_the_test_environment():
    for path in REQUIREMENT_FILES:
        assert dependencies.unsatisfied(dependencies.read_requirements(path)) == []
    assert dependencies.torch_action(dependencies.installed_version("torch")) == "ok"
