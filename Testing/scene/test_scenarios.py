"""The modules' self-test scenarios, run headless on slicer-core (the same code Slicer's ctest runs).

Slicer runs the installed scenarios on SampleData's CTLiver; here they get a phantom CT. The phantom/truth
scenarios, which Slicer does not get, run here too.
"""

from __future__ import annotations

import pytest

from LiverTumorSegLib.testing import phantom_scenarios
from LiverTumorSegLib.testing import scenarios as seg_scenarios
from TNMStagingLib.testing import scenarios as staging_scenarios

SLOW = {"segment_phantom_with_demo_models", "segment_phantom_with_demo_liver_model", "learned_stage_in_background",
        "segment_ct_with_demo_models"}


def _params(names):
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in names]


@pytest.mark.parametrize("name", _params(seg_scenarios.SCENARIOS))
def test_liver_tumor_seg_scenario(name, mrml_scene, tmp_path):
    seg_scenarios.run(name, mrml_scene, tmp_path, phantom_scenarios.phantom_ct_loader())


@pytest.mark.parametrize("name", _params(phantom_scenarios.SCENARIOS))
def test_phantom_scenario(name, mrml_scene, tmp_path):
    phantom_scenarios.SCENARIOS[name].function(
        seg_scenarios.ScenarioContext(mrml_scene, tmp_path, phantom_scenarios.phantom_ct_loader()))


@pytest.mark.parametrize("name", _params(staging_scenarios.SCENARIOS))
def test_tnm_staging_scenario(name, mrml_scene, tmp_path):
    staging_scenarios.run(name, mrml_scene, tmp_path, phantom_scenarios.phantom_ct_loader())


def test_without_torch_only_the_model_scenarios_are_skipped_with_a_message():
    for module in (seg_scenarios, staging_scenarios):
        run, skipped, message = seg_scenarios.plan(module.SCENARIOS, torch_installed=False)
        assert skipped and all(module.SCENARIOS[name].needs_models for name in skipped)
        assert run and not any(module.SCENARIOS[name].needs_models for name in run)
        assert "PyTorch is not installed" in message and all(name in message for name in skipped)
        assert seg_scenarios.plan(module.SCENARIOS, torch_installed=True) == (list(module.SCENARIOS), [], "")


def test_the_self_test_skips_model_scenarios_without_torch_and_installs_nothing(slicer_app, monkeypatch):
    """The Slicer self-test's driver, run here on the phantom: without torch only the model-free scenarios run."""
    from LiverTumorSegLib.testing import headless_slicer

    monkeypatch.setattr(seg_scenarios, "torch_available", lambda: False)
    chosen = {name: seg_scenarios.SCENARIOS[name] for name in
              ("window_presets", "segment_roles_everywhere", "cancel_returns_at_once_and_leaves_nothing")}
    reports, installs = [], []
    ran = seg_scenarios.run_self_test(chosen, seg_scenarios.run, ensure_dependencies=lambda: installs.append(1),
                                      set_up=headless_slicer.new_scene, report=reports.append,
                                      load_ct=phantom_scenarios.phantom_ct_loader())
    assert ran == ["window_presets", "segment_roles_everywhere"] and installs == []
    assert reports[0].startswith("PyTorch is not installed") and "cancel_returns_at_once_and_leaves_nothing" in reports[0]
    assert reports[1:] == ["window_presets passed", "segment_roles_everywhere passed"]
    headless_slicer.new_scene()


def test_the_self_test_installs_the_dependencies_before_model_scenarios_when_torch_is_there(slicer_app, monkeypatch):
    from LiverTumorSegLib.testing import headless_slicer

    ran = []
    monkeypatch.setattr(seg_scenarios, "torch_available", lambda: True)
    fake = {"model scenario": seg_scenarios.Scenario(lambda context: ran.append("model"), needs_models=True)}
    installs = []
    seg_scenarios.run_self_test(fake, lambda name, scene, work_dir, load_ct: fake[name].function(None),
                                ensure_dependencies=lambda: installs.append(len(ran)), set_up=headless_slicer.new_scene,
                                report=lambda message: None, load_ct=phantom_scenarios.phantom_ct_loader())
    assert installs == [0] and ran == ["model"], "dependencies must be installed before the model scenarios run"
