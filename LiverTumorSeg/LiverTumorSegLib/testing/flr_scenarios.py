"""FLR self-test scenarios shared by Slicer's self-test and the headless pytest suite, on any CT.

Each scenario is a function ``(context) -> None`` (``testing.scenarios.ScenarioContext``) that raises
``AssertionError`` on failure; it paints its liver and tumors on the given CT (``testing.cases``) and uses only
the compute core and the scene bridge, so it runs inside Slicer on SampleData's CTLiver and on the slicer-core
wheel on a phantom. The truth is computed from the painted masks with numpy/scipy, independently of
``resection.py``: voxel centres are placed with the CT's geometry and classified directly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.scene import flr as scene_flr
from LiverTumorSegLib.scene import segmentations
from LiverTumorSegLib.scene.roles import find_segment_roles
from LiverTumorSegLib.testing.cases import PaintedCase, painted_case

RELATIVE_TOLERANCE = 0.01  # FLR within 1 % of the truth
MARGIN_MM = 10.0


def _centres_lps(image: sitk.Image, mask_zyx: np.ndarray) -> np.ndarray:
    """LPS centres (mm), shape (N, 3), of the voxels where ``mask_zyx`` (z, y, x) is True."""
    k, j, i = np.nonzero(mask_zyx)
    index_xyz = np.stack([i, j, k], axis=1).astype(float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (index_xyz * np.asarray(image.GetSpacing())) @ direction.T


def _case(context, hand_tumor: bool = True) -> tuple[PaintedCase, sitk.Image, np.ndarray]:
    """The painted case, its truth labelmap and the parenchyma (liver minus every tumor) as (z, y, x) bool."""
    case = painted_case(context.scene, context.ct(), hand_tumor=hand_tumor)
    return case, case.labels(), case.liver & ~case.tumor


def _plane_through_liver(scene, labels: sitk.Image, parenchyma: np.ndarray):
    """A markups plane placed as a user would, in RAS: 20 % of the liver's extent to the patient's left of its
    centroid, tilted, normal pointing left. Returns (node, LPS point, LPS unit normal) for the truth."""
    centres = _centres_lps(labels, parenchyma)
    centroid = centres.mean(axis=0)
    offset = 0.2 * (centres[:, 0].max() - centres[:, 0].min())
    origin_ras = (-(centroid[0] + offset), -centroid[1], centroid[2])
    normal_ras = (-0.9, 0.3, 0.2)
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", "Resection plane")
    node.SetOrigin(*origin_ras)
    node.SetNormal(*normal_ras)
    point_lps = np.array([-origin_ras[0], -origin_ras[1], origin_ras[2]])
    normal_lps = np.array([-normal_ras[0], -normal_ras[1], normal_ras[2]])
    return node, point_lps, normal_lps / np.linalg.norm(normal_lps)


def _remnant_truth(labels: sitk.Image, parenchyma: np.ndarray, point_lps, normal_lps) -> int:
    """Remnant voxel count: parenchyma centres on the plane or behind its normal stay."""
    signed_mm = (_centres_lps(labels, parenchyma) - point_lps) @ normal_lps
    return int(np.count_nonzero(signed_mm <= 0.0))


def _assert_close(value: float, truth: float, what: str) -> None:
    assert abs(value - truth) <= RELATIVE_TOLERANCE * abs(truth), f"{what}: {value:.4f}, truth {truth:.4f}"


def plane_flr_matches_truth(context) -> None:
    """A RAS markups plane through the painted liver: FLR within 1 % of the voxel-count truth; flipping the plane
    resects the other side."""
    case, labels, parenchyma = _case(context)
    node, point_lps, normal_lps = _plane_through_liver(context.scene, labels, parenchyma)
    scheduled: list[int] = []
    planner = scene_flr.FLRPlanner(case.segmentation, case.volume, schedule_update=lambda: scheduled.append(1),
                                   plane_nodes=[node])
    try:
        out = planner.update_if_dirty()
        remnant_voxels, parenchyma_voxels = _remnant_truth(labels, parenchyma, point_lps, normal_lps), parenchyma.sum()
        figures = out.result.figures
        assert 0.2 < remnant_voxels / parenchyma_voxels < 0.95, "the plane must cut the liver"
        _assert_close(figures.flr_ml, remnant_voxels * case.voxel_ml, "FLR (mL)")
        _assert_close(figures.flr_ratio, remnant_voxels / parenchyma_voxels, "FLR ratio")
        _assert_close(figures.functional_liver_ml, parenchyma_voxels * case.voxel_ml, "functional liver (mL)")
        assert abs(figures.flr_ml + figures.resected_ml - figures.functional_liver_ml) < 1e-9
        assert scene_flr.table_values(out.table_node)["flr_ml"] == (f"{figures.flr_ml:.1f}", "mL")
        scene_flr.flip_plane_normal(node)
        flipped = planner.update_if_dirty()
        remnant_after = _remnant_truth(labels, parenchyma, point_lps, -normal_lps)
        _assert_close(flipped.result.figures.flr_ml, remnant_after * case.voxel_ml, "FLR after the flip (mL)")
    finally:
        planner.remove_observers()


def margin_resection_of_the_tumors(context) -> None:
    """A 10 mm margin around every tumor (the hand-added one too) resects exactly the parenchyma within 10 mm of
    a tumor voxel (nearest-centre search with a k-d tree), and the FLR drops by exactly that volume."""
    from scipy.spatial import cKDTree

    case, labels, parenchyma = _case(context)
    planner = scene_flr.FLRPlanner(case.segmentation, case.volume, observe=False)
    before = planner.update().result.figures
    assert before.resected_ml == 0.0 and before.flr_ratio == 1.0
    planner.set_parameters(margin_mm=MARGIN_MM)
    after = planner.update_if_dirty()
    tree = cKDTree(_centres_lps(labels, case.tumor))
    distance_mm, _ = tree.query(_centres_lps(labels, parenchyma), distance_upper_bound=MARGIN_MM + 1.0)
    within = distance_mm <= MARGIN_MM + 1e-6
    resected_truth = int(np.count_nonzero(within))
    assert resected_truth > 0, "no parenchyma within the margin"
    figures = after.result.figures
    assert round(figures.resected_ml / case.voxel_ml) == resected_truth, (figures.resected_ml / case.voxel_ml,
                                                                          resected_truth)
    assert abs((before.flr_ml - figures.flr_ml) - resected_truth * case.voxel_ml) < 1e-6
    truth_mask = np.zeros(parenchyma.shape, bool)
    truth_mask[tuple(np.array(np.nonzero(parenchyma))[:, within])] = True
    resected_segment = segmentations.segments_mask(case.segmentation, [after.segment_ids["resection"]], case.volume)
    assert np.array_equal(sitk.GetArrayViewFromImage(resected_segment) != 0, truth_mask), "resection segment"


def edited_liver_updates_the_table(context) -> None:
    """Erasing part of the liver segment marks the planner dirty, schedules one update, and the table then shows
    the FLR of the edited liver."""
    case, labels, parenchyma = _case(context, hand_tumor=False)
    node, point_lps, normal_lps = _plane_through_liver(context.scene, labels, parenchyma)
    scheduled: list[int] = []
    planner = scene_flr.FLRPlanner(case.segmentation, case.volume, schedule_update=lambda: scheduled.append(1),
                                   plane_nodes=[node])
    try:
        planner.update_if_dirty()
        assert len(scheduled) == 1 and not planner.dirty, f"{len(scheduled)} schedules before the edit"
        liver_id = find_segment_roles(case.segmentation).liver_id
        liver = sitk.GetArrayFromImage(segmentations.segments_mask(case.segmentation, [liver_id], case.volume))
        top = np.flatnonzero(liver.any(axis=(1, 2)))[-1]
        liver[max(top - 2, 0):] = 0  # erase the three most superior slices of the liver, as Segment Editor would
        segmentations.set_segment_mask(case.segmentation, liver_id,
                                       segmentations.image_on_volume_grid(liver, case.volume), case.volume)
        assert planner.dirty and len(scheduled) == 2, f"{len(scheduled) - 1} schedules for one edit"
        out = planner.update_if_dirty()
    finally:
        planner.remove_observers()
    edited = (liver != 0) & ~case.tumor
    values = scene_flr.table_values(out.table_node)
    assert values["functional_liver_ml"][0] == f"{edited.sum() * case.voxel_ml:.1f}", values
    _assert_close(out.result.figures.flr_ml, _remnant_truth(labels, edited, point_lps, normal_lps) * case.voxel_ml,
                  "FLR of the edited liver (mL)")


def users_segments_are_kept(context) -> None:
    """A segment the user named "Resection" is never overwritten (the output goes to "Resection (computed)"), and a
    computed output the user edits is kept and resected as painted from then on."""
    case, labels, parenchyma = _case(context, hand_tumor=False)
    node, _, _ = _plane_through_liver(context.scene, labels, parenchyma)
    own_zyx = np.zeros(parenchyma.shape, np.uint8)
    z, y, x = (int(np.median(axis)) for axis in np.nonzero(parenchyma))
    own_zyx[z - 1:z + 2, y - 4:y + 4, x - 4:x + 4] = 1
    segmentation = case.segmentation.GetSegmentation()
    own_id = segmentation.AddEmptySegment("", "Resection")
    segmentations.import_labelmap_segments(case.segmentation, own_zyx, [own_id], case.volume)
    planner = scene_flr.FLRPlanner(case.segmentation, case.volume, plane_nodes=[node], observe=False)
    out = planner.update()
    kept = segmentations.segments_mask(case.segmentation, [own_id], case.volume)
    assert np.array_equal(sitk.GetArrayViewFromImage(kept), own_zyx), "the user's Resection segment changed"
    assert not scene_flr.is_generated(segmentation.GetSegment(own_id))
    computed_id = out.segment_ids["resection"]
    assert segmentation.GetSegment(computed_id).GetName() == "Resection (computed)"
    edited = sitk.GetArrayFromImage(segmentations.segments_mask(case.segmentation, [computed_id], case.volume))
    edited |= own_zyx  # the user paints more into the computed resection
    segmentations.import_labelmap_segments(case.segmentation, edited, [computed_id], case.volume)
    again = planner.update()
    assert again.released == (("resection", computed_id),), again.released
    assert not scene_flr.is_generated(segmentation.GetSegment(computed_id))
    assert planner.parameters.resection_segment_id == computed_id
    after = sitk.GetArrayFromImage(segmentations.segments_mask(case.segmentation, [computed_id], case.volume))
    assert np.array_equal(after, edited), "the user's edit of the computed resection was overwritten"
    resected = sitk.GetArrayViewFromImage(again.result.resected) != 0
    assert np.array_equal(resected & (edited != 0) & parenchyma, (edited != 0) & parenchyma), \
        "the edited resection is not resected"


SCENARIOS: dict[str, Callable[[object], None]] = {
    "flr_plane_matches_truth": plane_flr_matches_truth,
    "flr_margin_resection_of_the_tumors": margin_resection_of_the_tumors,
    "flr_edited_liver_updates_the_table": edited_liver_updates_the_table,
    "flr_users_segments_are_kept": users_segments_are_kept,
}
