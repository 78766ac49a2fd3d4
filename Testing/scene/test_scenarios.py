"""The modules' self-test scenarios, run headless on slicer-core (the same code Slicer's ctest runs)."""

from __future__ import annotations

import pytest

from LiverTumorSegLib.testing import scenarios as seg_scenarios
from TNMStagingLib.testing import scenarios as staging_scenarios


@pytest.mark.parametrize("name", list(seg_scenarios.SCENARIOS))
def test_liver_tumor_seg_scenario(name, mrml_scene, tmp_path):
    seg_scenarios.run(name, mrml_scene, tmp_path)


@pytest.mark.parametrize("name", list(staging_scenarios.SCENARIOS))
def test_tnm_staging_scenario(name, mrml_scene, tmp_path):
    staging_scenarios.run(name, mrml_scene, tmp_path)
