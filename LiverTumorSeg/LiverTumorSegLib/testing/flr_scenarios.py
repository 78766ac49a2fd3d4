"""FLR self-test scenarios shared by Slicer's self-test and the headless pytest suite.

Each scenario is a function ``(scene, work_dir) -> None`` that raises ``AssertionError`` on failure; it
uses only the compute core and the scene bridge, so it runs inside Slicer (``slicer.mrmlScene``) and on
the slicer-core wheel. The truth is computed from the phantom labelmap with numpy/scipy, independently of
``resection.py``: voxel centres are placed with the labelmap's geometry and classified directly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.spatial import cKDTree

from LiverTumorSegLib.io.preview import write_flr_preview
from LiverTumorSegLib.scene import flr as scene_flr
from LiverTumorSegLib.scene import segmentations
from LiverTumorSegLib.scene import volumes as scene_bridge
from LiverTumorSegLib.scene.roles import find_segment_roles
from LiverTumorSegLib.synthetic.phantom import make_phantom

# Small phantom (96 x 96 pixels, 5 mm slices): fast inside Slicer and on CI, anatomy still in mm.
FLR_PHANTOM = {"seed": 7, "size_xy": 96, "slice_thickness_mm": 5.0, "n_tumors": 2}
RELATIVE_TOLERANCE = 0.01  # FLR within 1 % of the truth
MARGIN_MM = 10.0


def _case(scene, **phantom_changes):
    """Phantom -> CT volume node + segmentation ("Liver", "Liver tumor"); returns (phantom, volume, seg)."""
    phantom = make_phantom(**{**FLR_PHANTOM, **phantom_changes})
    volume = scene_bridge.volume_node_from_image(phantom.ct, "FLR phantom CT", scene=scene)
    segmentation = segmentations.labelmap_to_segmentation(phantom.labels, volume, scene=scene)
    return phantom, volume, segmentation


def _centres_lps(image: sitk.Image, mask_zyx: np.ndarray) -> np.ndarray:
    """LPS centres (mm), shape (N, 3), of the voxels where ``mask_zyx`` (z, y, x) is True."""
    k, j, i = np.nonzero(mask_zyx)
    index_xyz = np.stack([i, j, k], axis=1).astype(float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (index_xyz * np.asarray(image.GetSpacing())) @ direction.T


def _voxel_ml(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing())) / 1000.0


def _left_lobe_plane(scene, labels: sitk.Image):
    """A markups plane placed as a user would, in RAS: 20 mm to the patient's left of the liver centroid,
    normal pointing left (RAS -x), tilted. Returns (node, LPS point, LPS unit normal) for the truth."""
    centroid = _centres_lps(labels, sitk.GetArrayViewFromImage(labels) == 1).mean(axis=0)
    origin_ras = (-(centroid[0] + 20.0), -centroid[1], centroid[2])
    normal_ras = (-0.9, 0.3, 0.2)
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", "Resection plane")
    node.SetOrigin(*origin_ras)
    node.SetNormal(*normal_ras)
    point_lps = np.array([-origin_ras[0], -origin_ras[1], origin_ras[2]])
    normal_lps = np.array([-normal_ras[0], -normal_ras[1], normal_ras[2]])
    return node, point_lps, normal_lps / np.linalg.norm(normal_lps)


def _remnant_truth(labels: sitk.Image, point_lps, normal_lps, liver_zyx=None) -> tuple[int, int]:
    """(remnant, parenchyma) voxel counts: parenchyma centres on the plane or behind its normal stay."""
    parenchyma = sitk.GetArrayViewFromImage(labels) == 1 if liver_zyx is None else liver_zyx
    signed_mm = (_centres_lps(labels, parenchyma) - point_lps) @ normal_lps
    return int(np.count_nonzero(signed_mm <= 0.0)), int(np.count_nonzero(parenchyma))


def _assert_close(value: float, truth: float, what: str) -> None:
    assert abs(value - truth) <= RELATIVE_TOLERANCE * abs(truth), f"{what}: {value:.4f}, truth {truth:.4f}"


def plane_flr_matches_phantom(scene, work_dir: Path) -> None:
    """A RAS markups plane through the phantom's liver: FLR within 1 % of the voxel-count truth."""
    phantom, volume, segmentation = _case(scene)
    node, point_lps, normal_lps = _left_lobe_plane(scene, phantom.labels)
    scheduled: list[int] = []
    planner = scene_flr.FLRPlanner(
        segmentation, volume, schedule_update=lambda: scheduled.append(1), plane_nodes=[node]
    )
    try:
        out = planner.update_if_dirty()
    finally:
        planner.remove_observers()
    remnant_voxels, parenchyma_voxels = _remnant_truth(phantom.labels, point_lps, normal_lps)
    figures = out.result.figures
    voxel_ml = _voxel_ml(phantom.labels)
    assert 0.2 < remnant_voxels / parenchyma_voxels < 0.95, "the plane must cut the liver"
    _assert_close(figures.flr_ml, remnant_voxels * voxel_ml, "FLR (mL)")
    _assert_close(figures.flr_ratio, remnant_voxels / parenchyma_voxels, "FLR ratio")
    _assert_close(figures.functional_liver_ml, parenchyma_voxels * voxel_ml, "functional liver (mL)")
    assert abs(figures.flr_ml + figures.resected_ml - figures.functional_liver_ml) < 1e-9
    values = scene_flr.table_values(out.table_node)
    assert values["flr_ml"] == (f"{figures.flr_ml:.1f}", "mL"), values["flr_ml"]
    previews = write_flr_preview(
        phantom.ct, out.result.remnant, out.result.resected, out.result.tumor, Path(work_dir) / "flr_preview"
    )
    assert sorted(previews) == ["axial", "coronal", "sagittal"]
    assert all(path.is_file() and path.stat().st_size > 0 for path in previews.values())


def margin_resection_of_one_tumor(scene, work_dir: Path) -> None:
    """A 10 mm margin around the phantom's one tumor resects exactly the parenchyma within 10 mm of it
    (nearest-centre search with a k-d tree), and the FLR drops by exactly that volume."""
    phantom, volume, segmentation = _case(scene, n_tumors=1)
    labels = sitk.GetArrayViewFromImage(phantom.labels)
    assert np.any(labels == 2), "the scenario phantom must hold a tumor"
    planner = scene_flr.FLRPlanner(segmentation, volume, observe=False)
    before = planner.update().result.figures
    assert before.resected_ml == 0.0 and before.flr_ratio == 1.0
    planner.set_parameters(margin_mm=MARGIN_MM)
    after = planner.update_if_dirty()
    tree = cKDTree(_centres_lps(phantom.labels, labels == 2))
    distance_mm, _ = tree.query(
        _centres_lps(phantom.labels, labels == 1), distance_upper_bound=MARGIN_MM + 1.0
    )
    within = distance_mm <= MARGIN_MM + 1e-6
    voxel_ml = _voxel_ml(phantom.labels)
    resected_truth = int(np.count_nonzero(within))
    assert resected_truth > 0, "no parenchyma within the margin"
    figures = after.result.figures
    assert round(figures.resected_ml / voxel_ml) == resected_truth, (
        figures.resected_ml / voxel_ml,
        resected_truth,
    )
    assert abs((before.flr_ml - figures.flr_ml) - resected_truth * voxel_ml) < 1e-6
    assert figures.tumor_ml == before.tumor_ml and figures.total_liver_ml == before.total_liver_ml
    resected_segment = segmentations.segments_mask(segmentation, [after.segment_ids["resection"]], volume)
    truth_mask = np.zeros(labels.shape, bool)
    truth_mask[tuple(np.array(np.nonzero(labels == 1))[:, within])] = True
    assert np.array_equal(sitk.GetArrayViewFromImage(resected_segment) != 0, truth_mask), "resection segment"


def edited_liver_updates_the_table(scene, work_dir: Path) -> None:
    """Erasing part of the liver segment marks the planner dirty, schedules one update, and the table
    then shows the FLR of the edited liver."""
    phantom, volume, segmentation = _case(scene)
    node, point_lps, normal_lps = _left_lobe_plane(scene, phantom.labels)
    scheduled: list[int] = []
    planner = scene_flr.FLRPlanner(
        segmentation, volume, schedule_update=lambda: scheduled.append(1), plane_nodes=[node]
    )
    try:
        planner.update_if_dirty()
        assert len(scheduled) == 1 and not planner.dirty, f"{len(scheduled)} schedules before the edit"
        liver_id = find_segment_roles(segmentation).liver_id
        edited = segmentations.segments_mask(segmentation, [liver_id], volume)
        liver = sitk.GetArrayFromImage(edited)
        top = np.flatnonzero(liver.any(axis=(1, 2)))[-1]
        liver[top - 2 :] = 0  # erase the three most superior slices of the liver, as Segment Editor would
        edited = sitk.GetImageFromArray(liver)
        edited.CopyInformation(phantom.labels)
        segmentations.set_segment_mask(segmentation, liver_id, edited, volume)
        assert planner.dirty and len(scheduled) == 2, f"{len(scheduled) - 1} schedules for one edit"
        out = planner.update_if_dirty()
    finally:
        planner.remove_observers()
    parenchyma = (liver != 0) & (sitk.GetArrayViewFromImage(phantom.labels) != 2)
    remnant_voxels, parenchyma_voxels = _remnant_truth(phantom.labels, point_lps, normal_lps, parenchyma)
    voxel_ml = _voxel_ml(phantom.labels)
    values = scene_flr.table_values(out.table_node)
    assert values["functional_liver_ml"][0] == f"{parenchyma_voxels * voxel_ml:.1f}", values
    _assert_close(out.result.figures.flr_ml, remnant_voxels * voxel_ml, "FLR of the edited liver (mL)")
    assert values["flr_ml"][0] == f"{out.result.figures.flr_ml:.1f}"


def users_resection_segment_is_kept(scene, work_dir: Path) -> None:
    """A segment the user named "Resection" is never overwritten; the output goes to "Resection (computed)"."""
    phantom, volume, segmentation = _case(scene)
    node, _, _ = _left_lobe_plane(scene, phantom.labels)
    own_zyx = np.zeros(sitk.GetArrayViewFromImage(phantom.labels).shape, np.uint8)
    own_zyx[10:14, 40:50, 40:50] = 1
    own = sitk.GetImageFromArray(own_zyx)
    own.CopyInformation(phantom.labels)
    own_id = segmentation.GetSegmentation().AddEmptySegment("", "Resection")
    segmentations.set_segment_mask(segmentation, own_id, own, volume)
    for shift_mm in (0.0, 15.0):  # a first computation, then a plane move
        origin = [0.0, 0.0, 0.0]
        node.GetOriginWorld(origin)
        node.SetOrigin(origin[0] - shift_mm, origin[1], origin[2])
        out = scene_flr.compute_flr_in_scene(segmentation, volume, plane_nodes=[node])
        kept = segmentations.segments_mask(segmentation, [own_id], volume)
        assert np.array_equal(sitk.GetArrayViewFromImage(kept), own_zyx), (
            "the user's Resection segment changed"
        )
        segment = segmentation.GetSegmentation().GetSegment(own_id)
        assert segment.GetName() == "Resection" and not scene_flr.is_generated(segment)
        computed = segmentation.GetSegmentation().GetSegment(out.segment_ids["resection"])
        assert computed.GetName() == "Resection (computed)" and scene_flr.is_generated(computed)


SCENARIOS: dict[str, Callable[[object, Path], None]] = {
    "flr_plane_matches_phantom": plane_flr_matches_phantom,
    "flr_margin_resection_of_one_tumor": margin_resection_of_one_tumor,
    "flr_edited_liver_updates_the_table": edited_liver_updates_the_table,
    "flr_users_resection_segment_is_kept": users_resection_segment_is_kept,
}
