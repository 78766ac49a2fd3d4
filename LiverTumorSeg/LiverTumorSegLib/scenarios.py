"""Self-test scenarios shared by Slicer's self-test (ctest, Reload and Test) and the headless pytest suite.

Each scenario is a function ``(scene, work_dir) -> None`` that raises ``AssertionError`` on failure.
Inside Slicer the module's Test class passes ``slicer.mrmlScene``; under pytest the scene of the
headless slicer-core bootstrap is passed. Scenarios use only the scene bridge and the compute core.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import dicom_io, flr_scenarios, scene_input
from . import scene as scene_bridge
from .hu_windows import load_presets
from .phantom import make_phantom, write_phantom

# A small phantom keeps the self-tests fast inside Slicer and on CI; anatomy is in mm, so it stays sensible.
SCENARIO_PHANTOM = {"seed": 7, "size_xy": 96, "slice_thickness_mm": 5.0, "n_tumors": 2}


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="LiverTumorSeg-selftest-") as folder:
        yield Path(folder)


def _write_scenario_phantom(work_dir: Path):
    phantom = make_phantom(**SCENARIO_PHANTOM)
    paths = write_phantom(phantom, work_dir / "phantom")
    return phantom, paths


def _volume_nodes(scene) -> list:
    return [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]


def load_phantom_dicom(scene, work_dir: Path) -> None:
    """Phantom DICOM series -> volume node: HU voxel for voxel and geometry as written."""
    phantom, paths = _write_scenario_phantom(work_dir)
    volume_node, messages = scene_input.load_dicom_volume(paths["dicom"], scene=scene)
    assert volume_node.GetScene() is scene, "volume node not added to the given scene"
    assert messages == [], f"unexpected loader warnings: {messages}"
    loaded = scene_bridge.image_from_volume_node(volume_node)
    assert loaded.GetSize() == phantom.ct.GetSize()
    np.testing.assert_allclose(loaded.GetOrigin(), phantom.ct.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(loaded.GetSpacing(), phantom.ct.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(loaded.GetDirection(), phantom.ct.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayViewFromImage(loaded), sitk.GetArrayViewFromImage(phantom.ct)), \
        "HU values differ from the phantom"


def window_presets(scene, work_dir: Path) -> None:
    """Every HU preset sets the window/level of the CT's display node and turns auto W/L off."""
    _, paths = _write_scenario_phantom(work_dir)
    volume_node, _ = scene_input.load_dicom_volume(paths["dicom"], scene=scene)
    for preset in load_presets().values():
        scene_input.apply_window_preset(volume_node, preset.id)
        display = volume_node.GetDisplayNode()
        assert not display.GetAutoWindowLevel(), preset.id
        assert abs(display.GetWindow() - preset.width_hu) < 1e-6, preset.id
        assert abs(display.GetLevel() - preset.level_hu) < 1e-6, preset.id


def bad_dicom_leaves_scene_unchanged(scene, work_dir: Path) -> None:
    """A series with a missing slice is refused with a message that says so; the scene is untouched."""
    _, paths = _write_scenario_phantom(work_dir)
    files = sorted(Path(paths["dicom"]).glob("*.dcm"))
    files[len(files) // 2].unlink()
    nodes_before = scene.GetNumberOfNodes()
    try:
        scene_input.load_dicom_volume(paths["dicom"], scene=scene)
    except dicom_io.DicomInputError as error:
        assert "missing" in str(error).lower(), f"message does not say a slice is missing: {error}"
    else:
        raise AssertionError("a series with a missing slice was loaded")
    assert scene.GetNumberOfNodes() == nodes_before, "the scene changed although loading failed"
    assert not _volume_nodes(scene)


SCENARIOS: dict[str, Callable[[object, Path], None]] = {
    "load_phantom_dicom": load_phantom_dicom,
    "window_presets": window_presets,
    "bad_dicom_leaves_scene_unchanged": bad_dicom_leaves_scene_unchanged,
    **flr_scenarios.SCENARIOS,
}


def run(name: str, scene, work_dir: Path) -> None:
    """Run one scenario by name."""
    SCENARIOS[name](scene, Path(work_dir))
