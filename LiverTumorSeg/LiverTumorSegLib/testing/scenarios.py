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

from LiverTumorSegLib.core.hu_windows import load_presets
from LiverTumorSegLib.io import dicom_io
from LiverTumorSegLib.scene import input as scene_input
from LiverTumorSegLib.scene import volumes as scene_bridge
from LiverTumorSegLib.synthetic.phantom import make_phantom, write_phantom
from LiverTumorSegLib.testing import flr_scenarios

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


DEMO_LIVER_MODEL, DEMO_TUMOR_MODEL = "demo-liver-segresnet", "demo-tumor-segresnet"
RUN_PHANTOM = {"seed": 11, "size_xy": 192, "n_tumors": 2}


def _terminology_ok(segmentation_node, segments: tuple[tuple[str, str], ...]) -> None:
    import vtk

    from LiverTumorSegLib.core.terminology import load_segment_definitions

    definitions = load_segment_definitions()
    segmentation = segmentation_node.GetSegmentation()
    for segment_id, name in segments:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
        assert segment is not None, f"no {name} segment"
        value = vtk.reference("")
        assert segment.GetTag("TerminologyEntry", value), f"{name} has no terminology"
        assert str(value) == definitions[segment_id].terminology_entry, (name, str(value))
        assert np.allclose(segment.GetColor(), definitions[segment_id].color_rgb, atol=1e-3), name


def _run_demo_models(scene, work_dir: Path, tumor_model: str | None):
    """Phantom DICOM -> volume node -> blocking run with the demo models; checks progress, clean-up and the
    reference geometry; returns (phantom, measurements, segmentation node)."""
    from LiverTumorSegLib.scene.results import measure_segmentation
    from LiverTumorSegLib.scene.run import SegmentationRun

    phantom = make_phantom(**RUN_PHANTOM)
    paths = write_phantom(phantom, work_dir / "phantom")
    volume_node, _ = scene_input.load_dicom_volume(paths["dicom"], scene=scene)
    run = SegmentationRun(volume_node, liver_model=DEMO_LIVER_MODEL, tumor_model=tumor_model, device="cpu")
    fractions: list[float] = []
    segmentation_node = run.run_blocking(on_progress=lambda event: fractions.append(event.fraction or 0.0))
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0, "progress is not monotonic to 1"
    assert not run.worker.work_dir.exists(), "the job folder was not removed"
    reference = segmentation_node.GetNodeReference(segmentation_node.GetReferenceImageGeometryReferenceRole())
    assert reference is not None and reference.GetID() == volume_node.GetID(), "reference geometry is not the CT"
    return phantom, measure_segmentation(segmentation_node, volume_node), segmentation_node


def _volume_within(what: str, value_ml: float, truth_ml: float, tolerance: float = 0.05) -> None:
    assert abs(value_ml - truth_ml) <= tolerance * truth_ml, f"{what} volume {value_ml:.1f} mL vs truth {truth_ml:.1f} mL"


def segment_phantom_with_demo_liver_model(scene, work_dir: Path) -> None:
    """Phantom DICOM -> volume node -> blocking run with the demo liver model alone (tumor model: none) ->
    a Liver segment with its terminology, colour and the CT as reference geometry; the total liver volume
    (tumors included, as the liver stage segments them) within 5 % of the phantom truth."""
    phantom, measured, segmentation_node = _run_demo_models(scene, work_dir, None)
    _terminology_ok(segmentation_node, (("liver", "Liver"),))
    _volume_within("liver", measured.liver_volume_ml, phantom.liver_volume_ml())


def segment_phantom_with_demo_models(scene, work_dir: Path) -> None:
    """Phantom DICOM -> volume node -> blocking run with the demo models -> segments with the right
    terminology, colours and geometry, liver and tumor volumes within 5 % of the phantom truth.

    The run phantom's seed is not among the demo models' training or held-out seeds.
    """
    phantom, measured, segmentation_node = _run_demo_models(scene, work_dir, DEMO_TUMOR_MODEL)
    _terminology_ok(segmentation_node, (("liver", "Liver"), ("liver_tumor", "Liver tumor")))
    _volume_within("liver", measured.liver_volume_ml, phantom.liver_volume_ml())
    _volume_within("tumor", measured.tumor_volume_ml, phantom.tumor_volume_ml())


def untrained_test_models(work_dir: Path, spacing_mm: float = 1.5) -> Path:
    """A manifest with two randomly initialised small SegResNets: for process tests, never for accuracy."""
    import hashlib
    import json

    import torch
    from monai.networks.nets import SegResNet

    args = {"spatial_dims": 3, "init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1], "out_channels": 2}
    entries = []
    torch.manual_seed(0)
    for task, channels in (("liver", 1), ("tumor", 2)):
        path = work_dir / f"untrained_{task}.pt"
        torch.save({"state_dict": SegResNet(**args, in_channels=channels).state_dict()}, path)
        entries.append({
            "id": f"untrained-{task}", "title": f"untrained {task} network (process tests only)", "task": task,
            "labels": {task: 1}, "network": {"class": "monai.networks.nets.SegResNet",
                                               "args": dict(args, in_channels=channels)},
            "input_channels": ["ct"] if task == "liver" else ["ct", "liver_mask"], "orientation": "RAS",
            "spacing_mm": [spacing_mm] * 3, "intensity": {"type": "clip_scale", "hu_min": -100, "hu_max": 200,
                                                         "out_min": 0.0, "out_max": 1.0},
            "roi_size": [32, 32, 32], "sw_overlap": 0.25, "file_name": path.name, "local_path": path.name,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "checkpoint_format": "state_dict",
            "license": "Apache-2.0", "training_data": "none: random initialisation", "demo_only": True,
        })
    manifest = work_dir / "untrained_models.json"
    manifest.write_text(json.dumps({"models": entries}))
    return manifest


def cancel_once_running(run, scene, stage: str, grace_s: float = 15.0) -> None:
    """Start ``run`` (a ``scene_run.BackgroundRun``), cancel it once the worker reports ``stage``, and check
    that nothing is left: ``RunCancelled``, the scene as before, no job folder, no worker process."""
    import os
    import time

    from LiverTumorSegLib.scene.run import RunCancelled

    nodes_before = scene.GetNumberOfNodes()
    run.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(event.stage == stage for event in run.poll()):
        time.sleep(0.05)
    assert run.running(), "the worker ended before it could be cancelled: " + "; ".join(run.log_lines()[-3:])
    worker_pid = int((run.worker.work_dir / "worker.pid").read_text())
    started = time.monotonic()
    run.cancel()
    try:
        run.finish()
    except RunCancelled:
        pass
    else:
        raise AssertionError("a cancelled run returned a result")
    assert time.monotonic() - started < grace_s, "cancel took too long"
    assert scene.GetNumberOfNodes() == nodes_before, "the scene changed although the run was cancelled"
    assert not run.worker.work_dir.exists(), "temporary files were left behind"
    try:
        os.kill(worker_pid, 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError(f"worker process {worker_pid} is still running")


def cancel_mid_run_leaves_nothing(scene, work_dir: Path) -> None:
    """Cancel during the liver stage: no segmentation node, no job folder, no worker process left."""
    from LiverTumorSegLib.scene.run import SegmentationRun

    phantom = make_phantom(**RUN_PHANTOM)
    volume_node = scene_bridge.volume_node_from_image(phantom.ct, "phantom", scene=scene)
    run = SegmentationRun(volume_node, liver_model="untrained-liver", tumor_model="untrained-tumor", device="cpu",
                          manifest=untrained_test_models(Path(work_dir)))
    cancel_once_running(run, scene, "liver")


SCENARIOS: dict[str, Callable[[object, Path], None]] = {
    "load_phantom_dicom": load_phantom_dicom,
    "window_presets": window_presets,
    "bad_dicom_leaves_scene_unchanged": bad_dicom_leaves_scene_unchanged,
    "segment_phantom_with_demo_liver_model": segment_phantom_with_demo_liver_model,
    "segment_phantom_with_demo_models": segment_phantom_with_demo_models,
    "cancel_mid_run_leaves_nothing": cancel_mid_run_leaves_nothing,
    **flr_scenarios.SCENARIOS,
}


def run(name: str, scene, work_dir: Path) -> None:
    """Run one scenario by name."""
    SCENARIOS[name](scene, Path(work_dir))
