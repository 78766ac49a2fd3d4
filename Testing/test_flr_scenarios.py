"""The FLR self-test scenarios, run headless on slicer-core (the same code Slicer's self-test runs)."""

from __future__ import annotations

import pytest
from LiverTumorSegLib import flr_scenarios


@pytest.mark.parametrize("name", list(flr_scenarios.SCENARIOS))
def test_flr_scenario(name, mrml_scene, tmp_path):
    flr_scenarios.SCENARIOS[name](mrml_scene, tmp_path)
