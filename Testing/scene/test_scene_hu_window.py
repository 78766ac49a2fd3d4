"""HU windows on volume display nodes, and agreement with Slicer's volume display presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.core.hu_windows import load_presets
from LiverTumorSegLib.scene import volumes as scene

# Slicer 5.12, Modules/Loadable/Volumes/Resources/VolumeDisplayPresets.json (not shipped in slicer-core).
SLICER_PRESETS_SCHEMA = (
    "https://raw.githubusercontent.com/Slicer/Slicer/main/Modules/Loadable/Volumes/Resources/"
    "Schema/volumes-display-presets-schema-v1.0.1.json#"
)
SLICER_CT_ABDOMEN = {
    "id": "CT_ABDOMEN",
    "name": "CT-Abdomen",
    "description": "View abdominal CT volume.",
    "icon": ":/Icons/WindowLevelPreset-Abdomen.png",
    "window": 350.0,
    "level": 40.0,
    "color": "vtkMRMLColorTableNodeGrey",
}


@pytest.fixture
def ct_node(mrml_scene):
    hu = np.linspace(-1000, 1500, 4 * 5 * 6).reshape(4, 5, 6).astype(np.int16)
    return scene.volume_node_from_image(sitk.GetImageFromArray(hu), "CT", scene=mrml_scene)


@pytest.fixture
def volumes_logic_with_slicer_presets(slicer_app, tmp_path):
    """A Volumes logic reading Slicer's CT_ABDOMEN preset from a VolumeDisplayPresets.json file."""
    import slicer

    (tmp_path / "VolumeDisplayPresets.json").write_text(
        json.dumps({"$schema": SLICER_PRESETS_SCHEMA, "volumeDisplayPresets": [SLICER_CT_ABDOMEN]})
    )
    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetModuleShareDirectory(str(tmp_path))  # the presets are read from there on first use
    return logic


@pytest.mark.parametrize("preset_id", list(load_presets()))
def test_hu_window_sets_display_window_level(ct_node, preset_id):
    display = ct_node.GetDisplayNode()
    assert display.GetAutoWindowLevel()  # a new volume starts with automatic window/level
    window = load_presets()[preset_id]
    scene.apply_hu_window(ct_node, window)
    assert not display.GetAutoWindowLevel()
    assert display.GetWindow() == pytest.approx(window.width_hu)
    assert display.GetLevel() == pytest.approx(window.level_hu)
    assert display.GetWindowLevelMin() == pytest.approx(window.lower_hu)
    assert display.GetWindowLevelMax() == pytest.approx(window.upper_hu)


def test_hu_window_creates_a_missing_display_node(mrml_scene):
    node = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "bare")
    scene.apply_hu_window(node, load_presets()["liver"])
    assert (node.GetDisplayNode().GetWindow(), node.GetDisplayNode().GetLevel()) == (150.0, 30.0)
    with pytest.raises(ValueError, match="no volume node"):
        scene.apply_hu_window(None, load_presets()["liver"])


def test_slicer_ct_abdomen_preset_through_the_volumes_logic(ct_node, volumes_logic_with_slicer_presets):
    scene.apply_volume_display_preset(ct_node, "CT_ABDOMEN", volumes_logic=volumes_logic_with_slicer_presets)
    display = ct_node.GetDisplayNode()
    assert not display.GetAutoWindowLevel()
    assert (display.GetWindow(), display.GetLevel()) == (350.0, 40.0)
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeGrey"


def test_our_abdomen_window_is_slicers_ct_abdomen(ct_node, volumes_logic_with_slicer_presets):
    abdomen = load_presets()["abdomen"]
    assert (abdomen.width_hu, abdomen.level_hu) == (SLICER_CT_ABDOMEN["window"], SLICER_CT_ABDOMEN["level"])
    scene.apply_hu_window(ct_node, abdomen)
    # Slicer itself recognises the display as its CT_ABDOMEN preset (window, level and colour map match).
    assert (
        volumes_logic_with_slicer_presets.GetAppliedVolumeDisplayPresetId(ct_node.GetDisplayNode())
        == "CT_ABDOMEN"
    )


def test_unknown_display_preset_lists_the_known_ones(ct_node, volumes_logic_with_slicer_presets):
    with pytest.raises(KeyError, match="'CT_LIVER'.*knows: CT_ABDOMEN"):
        scene.apply_volume_display_preset(
            ct_node, "CT_LIVER", volumes_logic=volumes_logic_with_slicer_presets
        )
