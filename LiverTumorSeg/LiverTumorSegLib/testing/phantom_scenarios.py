"""Scenarios that need the synthetic phantom and its truth: DICOM loading with our own reader (the command line's
and the worker's path) and the accuracy of the phantom-trained demo models. Not installed into Slicer (they build
phantoms, ``synthetic``); the headless suite runs them beside the installed scenarios of ``testing.scenarios``,
whose CT it gives from ``phantom_ct_loader``.

Each scenario is ``(context) -> None`` (``testing.scenarios.ScenarioContext``; only ``scene`` and ``work_dir``
are used) and raises ``AssertionError`` on failure.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.io import dicom_io
from LiverTumorSegLib.scene import input as scene_input
from LiverTumorSegLib.scene import volumes as scene_bridge
from LiverTumorSegLib.synthetic.phantom import make_phantom, write_phantom
from LiverTumorSegLib.testing.scenarios import DEMO_LIVER_MODEL, DEMO_TUMOR_MODEL, Scenario, terminology_ok

# A small phantom keeps the scenarios fast; anatomy is in mm, so it stays sensible.
SCENARIO_PHANTOM = {"seed": 7, "size_xy": 96, "slice_thickness_mm": 5.0, "n_tumors": 2}
# The accuracy scenarios: a seed not among the demo models' training or held-out seeds.
RUN_PHANTOM = {"seed": 11, "size_xy": 192, "n_tumors": 2}


@functools.lru_cache(maxsize=4)
def _phantom(**arguments):
    return make_phantom(**arguments)


def phantom_ct_loader(**arguments) -> Callable[[object], object]:
    """``load_ct`` for the installed scenarios: the phantom CT (``SCENARIO_PHANTOM`` by default) as a new node."""
    phantom = _phantom(**(arguments or SCENARIO_PHANTOM))
    return lambda scene: scene_bridge.volume_node_from_image(phantom.ct, "phantom CT", scene=scene)


def _volume_nodes(scene) -> list:
    return [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]


def load_phantom_dicom(context) -> None:
    """Phantom DICOM series -> volume node with our reader: HU voxel for voxel and geometry as written."""
    phantom = _phantom(**SCENARIO_PHANTOM)
    paths = write_phantom(phantom, Path(context.work_dir) / "phantom")
    volume_node, messages = scene_input.load_dicom_volume(paths["dicom"], scene=context.scene)
    assert volume_node.GetScene() is context.scene, "volume node not added to the given scene"
    assert messages == [], f"unexpected loader warnings: {messages}"
    loaded = scene_bridge.image_from_volume_node(volume_node)
    assert loaded.GetSize() == phantom.ct.GetSize()
    np.testing.assert_allclose(loaded.GetOrigin(), phantom.ct.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(loaded.GetSpacing(), phantom.ct.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(loaded.GetDirection(), phantom.ct.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayViewFromImage(loaded), sitk.GetArrayViewFromImage(phantom.ct)), \
        "HU values differ from the phantom"


def bad_dicom_leaves_scene_unchanged(context) -> None:
    """A series with a missing slice is refused with a message that says so; the scene is untouched."""
    paths = write_phantom(_phantom(**SCENARIO_PHANTOM), Path(context.work_dir) / "phantom")
    files = sorted(Path(paths["dicom"]).glob("*.dcm"))
    files[len(files) // 2].unlink()
    nodes_before = context.scene.GetNumberOfNodes()
    try:
        scene_input.load_dicom_volume(paths["dicom"], scene=context.scene)
    except dicom_io.DicomInputError as error:
        assert "missing" in str(error).lower(), f"message does not say a slice is missing: {error}"
    else:
        raise AssertionError("a series with a missing slice was loaded")
    assert context.scene.GetNumberOfNodes() == nodes_before, "the scene changed although loading failed"
    assert not _volume_nodes(context.scene)


def _run_demo_models(context, tumor_model: str | None):
    """Phantom DICOM -> volume node -> blocking run with the demo models; returns (phantom, measurements, node)."""
    from LiverTumorSegLib.scene.results import measure_segmentation
    from LiverTumorSegLib.scene.run import SegmentationRun

    phantom = _phantom(**RUN_PHANTOM)
    paths = write_phantom(phantom, Path(context.work_dir) / "phantom")
    volume_node, _ = scene_input.load_dicom_volume(paths["dicom"], scene=context.scene)
    run = SegmentationRun(volume_node, liver_model=DEMO_LIVER_MODEL, tumor_model=tumor_model, device="cpu")
    node = run.run_blocking()
    assert not run.worker.work_dir.exists(), "the job folder was not removed"
    return phantom, measure_segmentation(node, volume_node), node


def _volume_within(what: str, value_ml: float, truth_ml: float, tolerance: float = 0.05) -> None:
    assert abs(value_ml - truth_ml) <= tolerance * truth_ml, f"{what} volume {value_ml:.1f} mL vs truth {truth_ml:.1f} mL"


def segment_phantom_with_demo_liver_model(context) -> None:
    """The demo liver model alone (tumor model: none): a Liver segment with its terminology and colour; the total
    liver volume (tumors included, as the liver stage segments them) within 5 % of the phantom truth."""
    phantom, measured, node = _run_demo_models(context, None)
    terminology_ok(node, (("liver", "Liver"),))
    _volume_within("liver", measured.liver_volume_ml, phantom.liver_volume_ml())


def segment_phantom_with_demo_models(context) -> None:
    """The demo models on a phantom none of them saw: liver and tumor volumes within 5 % of the phantom truth."""
    phantom, measured, node = _run_demo_models(context, DEMO_TUMOR_MODEL)
    terminology_ok(node, (("liver", "Liver"), ("liver_tumor", "Liver tumor")))
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


SCENARIOS: dict[str, Scenario] = {
    "load_phantom_dicom": Scenario(load_phantom_dicom),
    "bad_dicom_leaves_scene_unchanged": Scenario(bad_dicom_leaves_scene_unchanged),
    "segment_phantom_with_demo_liver_model": Scenario(segment_phantom_with_demo_liver_model, needs_models=True),
    "segment_phantom_with_demo_models": Scenario(segment_phantom_with_demo_models, needs_models=True),
}
