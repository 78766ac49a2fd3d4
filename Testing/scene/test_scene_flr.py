"""FLR scene bridge on slicer-core: RAS markups planes -> LPS core planes, output segments and table,
the never-overwrite rule, event debouncing and calculator reuse."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.core.flr import FLRCalculator, flr_table_rows
from LiverTumorSegLib.core.resection import Plane
from LiverTumorSegLib.core.terminology import load_segment_definitions
from LiverTumorSegLib.scene import flr as scene_flr
from LiverTumorSegLib.scene import segmentations
from LiverTumorSegLib.scene import volumes as scene_bridge
from LiverTumorSegLib.scene.roles import find_segment_roles

# Oblique grid (rotated 30 degrees about the patient z axis), anisotropic spacing: a RAS/LPS mix-up or a
# lost direction matrix moves the cut.
_ANGLE = math.radians(30.0)
DIRECTION = (
    math.cos(_ANGLE), -math.sin(_ANGLE), 0.0,
    math.sin(_ANGLE), math.cos(_ANGLE), 0.0,
    0.0, 0.0, 1.0,
)  # fmt: skip
SPACING = (1.5, 1.25, 2.5)
ORIGIN = (12.0, -30.0, 40.0)
# LPS plane through the liver with a normal that has x, y and z parts.
PLANE_LPS = Plane((50.0, 6.0, 66.3), (0.8, 0.45, 0.2))


def _labels() -> sitk.Image:
    z, y, x = np.mgrid[0:18, 0:36, 0:44]
    array = np.zeros(z.shape, np.uint8)
    array[((x - 22) / 17.0) ** 2 + ((y - 18) / 13.0) ** 2 + ((z - 9) / 7.5) ** 2 <= 1] = 1
    array[((x - 29) / 4.0) ** 2 + ((y - 17) / 4.0) ** 2 + ((z - 9) / 2.5) ** 2 <= 1] = 2
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


@pytest.fixture
def case(mrml_scene):
    labels = _labels()
    ct = sitk.Cast(labels, sitk.sitkInt16) * 40 + 20
    volume = scene_bridge.volume_node_from_image(ct, "CT", scene=mrml_scene)
    segmentation = segmentations.labelmap_to_segmentation(labels, volume, scene=mrml_scene)
    return labels, volume, segmentation


def _ras_plane_node(scene, plane: Plane, name: str = "Cut"):
    """A markups plane placed in RAS for the LPS ``plane``: (x, y, z) -> (-x, -y, z), normal likewise."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", name)
    x, y, z = plane.point_mm
    nx, ny, nz = plane.normal
    node.SetOrigin(-x, -y, z)
    node.SetNormal(-nx, -ny, nz)
    return node


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _segment_array(segmentation, segment_id, volume) -> np.ndarray:
    return _array(segmentations.segments_mask(segmentation, [segment_id], volume))


def test_ras_plane_resects_the_voxels_of_the_lps_plane(case, mrml_scene):
    labels, volume, segmentation = case
    node = _ras_plane_node(mrml_scene, PLANE_LPS)
    converted = scene_flr.plane_from_markups(node, volume)
    np.testing.assert_allclose(converted.point_mm, PLANE_LPS.point_mm, atol=1e-9)
    np.testing.assert_allclose(converted.normal, PLANE_LPS.normal, atol=1e-9)

    out = scene_flr.compute_flr_in_scene(segmentation, volume, plane_nodes=[node])
    expected = FLRCalculator.from_labelmap(labels).compute(planes=[PLANE_LPS])
    assert 0 < expected.figures.resected_ml < expected.figures.functional_liver_ml
    assert np.array_equal(_array(out.result.resected), _array(expected.resected))
    assert out.result.figures == expected.figures
    # The same numbers given unflipped (as if RAS were LPS) cut elsewhere: the test can fail.
    unflipped = Plane((-50.0, -6.0, 66.3), (-0.8, -0.45, 0.2))
    wrong = FLRCalculator.from_labelmap(labels).compute(planes=[unflipped])
    assert wrong.figures.resected_ml != pytest.approx(expected.figures.resected_ml, rel=0.05)


def test_parent_transforms_of_plane_and_volume_are_honoured(case, mrml_scene):
    import vtk

    labels, volume, segmentation = case
    # Plane under a transform: the world plane (transform applied) is what counts.
    shift = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, -7.0)  # RAS x -7 mm = LPS x +7 mm
    shift.SetMatrixTransformToParent(matrix)
    node = _ras_plane_node(mrml_scene, PLANE_LPS)
    node.SetAndObserveTransformNodeID(shift.GetID())
    moved = Plane((PLANE_LPS.point_mm[0] + 7.0, *PLANE_LPS.point_mm[1:]), PLANE_LPS.normal)
    converted = scene_flr.plane_from_markups(node, volume)
    np.testing.assert_allclose(converted.point_mm, moved.point_mm, atol=1e-9)
    # Volume (and segmentation) under an affine transform with shear and scaling: the plane is mapped
    # into the volume's own frame (points by the inverse, normals by the transpose of the linear part).
    affine = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "affine")
    to_world = np.array([[0.0, -1.2, 0.3, 5.0], [1.0, 0.0, 0.0, -3.0], [0.0, 0.0, 0.8, 2.0], [0, 0, 0, 1]])
    affine_matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            affine_matrix.SetElement(row, column, to_world[row, column])
    affine.SetMatrixTransformToParent(affine_matrix)
    volume.SetAndObserveTransformNodeID(affine.GetID())
    segmentation.SetAndObserveTransformNodeID(affine.GetID())
    plain = _ras_plane_node(mrml_scene, PLANE_LPS, "world plane")
    local = scene_flr.plane_from_markups(plain, volume)
    # Signed distances of local points to the local plane are those of their world images to the world
    # plane, times one positive constant (same side, same cut).
    flip = np.diag([-1.0, -1.0, 1.0])
    points_lps = np.random.default_rng(0).uniform(-80.0, 120.0, size=(50, 3))
    points_world_lps = (flip @ (to_world[:3, :3] @ (flip @ points_lps.T) + to_world[:3, 3:])).T
    ratios = PLANE_LPS.signed_distance_mm(points_world_lps) / local.signed_distance_mm(points_lps)
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)
    assert ratios[0] > 0
    out = scene_flr.compute_flr_in_scene(segmentation, volume, plane_nodes=[plain])
    expected = FLRCalculator.from_labelmap(labels).compute(planes=[local])
    assert out.result.figures == expected.figures


def test_outputs_tags_table_and_exact_accounting(case, mrml_scene):
    labels, volume, segmentation = case
    node = _ras_plane_node(mrml_scene, PLANE_LPS)
    out = scene_flr.compute_flr_in_scene(
        segmentation, volume, plane_nodes=[node], margin_mm=3.0, height_cm=170, weight_kg=70
    )
    definitions = load_segment_definitions()
    seg = segmentation.GetSegmentation()
    for role, definition_id in scene_flr.OUTPUT_DEFINITIONS.items():
        segment = seg.GetSegment(out.segment_ids[role])
        assert segment.GetName() == definitions[definition_id].name
        assert scene_flr.is_generated(segment)
        assert segment.GetTerminology() == definitions[definition_id].terminology_entry
        np.testing.assert_allclose(segment.GetColor(), definitions[definition_id].color_rgb, atol=1e-6)
    resected = _segment_array(segmentation, out.segment_ids["resection"], volume)
    remnant = _segment_array(segmentation, out.segment_ids["remnant"], volume)
    parenchyma = _array(labels) == 1
    assert not np.any(resected & remnant)
    assert np.array_equal((resected | remnant).astype(bool), parenchyma)
    expected = FLRCalculator.from_labelmap(labels).compute(
        planes=[PLANE_LPS], margin_mm=3.0, height_cm=170, weight_kg=70
    )
    assert np.array_equal(resected, _array(expected.resected))
    # Inputs untouched.
    assert np.array_equal(_segment_array(segmentation, "liver", volume), parenchyma.astype(np.uint8))
    assert np.array_equal(
        _segment_array(segmentation, "liver_tumor", volume), (_array(labels) == 2).astype(np.uint8)
    )
    # Table: one row per figure, as the report formats them.
    rows = flr_table_rows(expected.figures.to_dict())
    values = scene_flr.table_values(out.table_node)
    assert out.table_node.GetName() == scene_flr.TABLE_NAME
    assert values == {key: (value, unit) for key, _, value, unit in rows}
    assert values["bsa_m2"] == ("1.818", "m^2") and values["telv_ml"] == ("1509.7", "mL")
    # Recompute with other parameters: the same segments and table are updated in place.
    count = seg.GetNumberOfSegments()
    tables = mrml_scene.GetNumberOfNodesByClass("vtkMRMLTableNode")
    again = scene_flr.compute_flr_in_scene(segmentation, volume, plane_nodes=[node])
    assert again.segment_ids == out.segment_ids and again.table_node is out.table_node
    assert seg.GetNumberOfSegments() == count
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == tables
    assert scene_flr.table_values(out.table_node)["bsa_m2"] == ("n/a", "m^2")
    resected_again = _segment_array(segmentation, out.segment_ids["resection"], volume)
    assert np.array_equal(
        resected_again, _array(FLRCalculator.from_labelmap(labels).compute(planes=[PLANE_LPS]).resected)
    )


def test_users_own_segments_are_never_overwritten(case, mrml_scene):
    import slicer

    labels, volume, segmentation = case
    seg = segmentation.GetSegmentation()
    own = np.zeros(_array(labels).shape, np.uint8)
    own[2:5, 3:9, 4:12] = 1  # outside the plane's cut: a computed resection would differ
    for name in ("Resection", "Future liver remnant"):
        segment_id = seg.AddEmptySegment("", name)
        slicer.util.updateSegmentBinaryLabelmapFromArray(own, segmentation, segment_id, volume)
    user_ids = [seg.GetSegmentIdBySegmentName(name) for name in ("Resection", "Future liver remnant")]
    node = _ras_plane_node(mrml_scene, PLANE_LPS)
    for _ in range(2):
        out = scene_flr.compute_flr_in_scene(segmentation, volume, plane_nodes=[node])
        for user_id in user_ids:
            assert not scene_flr.is_generated(seg.GetSegment(user_id))
            assert np.array_equal(_segment_array(segmentation, user_id, volume), own)
        assert seg.GetSegment(out.segment_ids["resection"]).GetName() == "Resection (computed)"
        assert seg.GetSegment(out.segment_ids["remnant"]).GetName() == "Future liver remnant (computed)"
        assert seg.GetNumberOfSegments() == 6
    assert np.any(_segment_array(segmentation, out.segment_ids["resection"], volume) != own)


def test_painted_resection_segment_is_read_not_modified(case, mrml_scene):
    import slicer

    labels, volume, segmentation = case
    seg = segmentation.GetSegmentation()
    painted = np.zeros(_array(labels).shape, np.uint8)
    painted[:, :, :14] = 1  # the right part of the image
    painted_id = seg.AddEmptySegment("", "My cut")
    slicer.util.updateSegmentBinaryLabelmapFromArray(painted, segmentation, painted_id, volume)
    out = scene_flr.compute_flr_in_scene(segmentation, volume, resection_segment_id=painted_id)
    mask = sitk.GetImageFromArray(painted)
    mask.CopyInformation(labels)
    expected = FLRCalculator.from_labelmap(labels).compute(resection_mask=mask)
    assert out.result.figures == expected.figures and expected.figures.resected_ml > 0
    assert np.array_equal(_segment_array(segmentation, painted_id, volume), painted)
    with pytest.raises(ValueError, match="computed FLR output"):
        scene_flr.compute_flr_in_scene(
            segmentation, volume, resection_segment_id=out.segment_ids["resection"]
        )
    with pytest.raises(ValueError, match="not in"):
        scene_flr.compute_flr_in_scene(segmentation, volume, resection_segment_id="no such segment")


def test_inputs_found_by_name_and_several_tumor_segments(mrml_scene):
    import slicer

    labels = _labels()
    volume = scene_bridge.volume_node_from_image(sitk.Cast(labels, sitk.sitkInt16), "CT", scene=mrml_scene)
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "hand made")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    array = _array(labels)
    tumor_halves = [
        (array == 2) & (np.arange(array.shape[2]) < 29),
        (array == 2) & (np.arange(array.shape[2]) >= 29),
    ]
    seg = segmentation.GetSegmentation()
    for name, mask in (("Tumor", tumor_halves[0]), ("liver", array == 1), ("Liver tumor", tumor_halves[1])):
        segment_id = seg.AddEmptySegment("", name)
        slicer.util.updateSegmentBinaryLabelmapFromArray(
            mask.astype(np.uint8), segmentation, segment_id, volume
        )
    roles = find_segment_roles(segmentation)
    assert seg.GetSegment(roles.liver_id).GetName() == "liver" and len(roles.tumor_ids) == 2
    out = scene_flr.compute_flr_in_scene(segmentation, volume, margin_mm=2.0)
    assert out.result.figures == FLRCalculator.from_labelmap(labels).compute(margin_mm=2.0).figures


def test_hand_made_tumor_joins_the_coded_one_and_a_removed_table_is_replaced(case, mrml_scene):
    import slicer

    labels, volume, segmentation = case
    extra = np.zeros(_array(labels).shape, np.uint8)
    extra[7:11, 14:18, 10:14] = 1  # in the liver, away from the coded tumor
    extra_id = segmentation.GetSegmentation().AddEmptySegment("", "Tumor 2")
    slicer.util.updateSegmentBinaryLabelmapFromArray(extra, segmentation, extra_id, volume)
    roles = find_segment_roles(segmentation)
    assert roles.liver_id == "liver" and roles.tumor_ids == ("liver_tumor", extra_id)
    first = scene_flr.compute_flr_in_scene(segmentation, volume)
    both = _array(labels).copy()
    both[extra == 1] = 2  # a tumor voxel counts as tumor wherever it lies
    expected = FLRCalculator.from_labelmap(sitk.GetImageFromArray(both)).compute()
    assert first.result.figures.tumor_ml == pytest.approx(expected.figures.tumor_ml * np.prod(SPACING))
    mrml_scene.RemoveNode(first.table_node)
    second = scene_flr.compute_flr_in_scene(segmentation, volume)
    assert second.table_node.GetScene() is mrml_scene and second.table_node is not first.table_node


def test_missing_liver_and_unplaced_plane_say_so(mrml_scene):
    labels = _labels()
    volume = scene_bridge.volume_node_from_image(sitk.Cast(labels, sitk.sitkInt16), "CT", scene=mrml_scene)
    with pytest.warns(segmentations.SegmentationLabelWarning):
        segmentation = segmentations.labelmap_to_segmentation(labels, volume, segments={2: "liver_tumor"})
    with pytest.raises(ValueError, match="no liver segment.*'Liver tumor'"):
        scene_flr.compute_flr_in_scene(segmentation, volume)
    empty_plane = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", "unplaced")
    with pytest.raises(ValueError, match="'unplaced' is not fully placed"):
        scene_flr.plane_from_markups(empty_plane, volume)
    with pytest.raises(ValueError, match="segmentation node and its reference"):
        scene_flr.FLRPlanner(segmentation, None)


def test_debounce_and_no_loop_on_own_writes(case, mrml_scene):
    import slicer

    labels, volume, segmentation = case
    node = _ras_plane_node(mrml_scene, PLANE_LPS)
    scheduled = []
    planner = scene_flr.FLRPlanner(
        segmentation, volume, schedule_update=lambda: scheduled.append(1), plane_nodes=[node]
    )
    assert len(scheduled) == 1 and planner.dirty
    first = planner.update_if_dirty()
    assert first is not None and not planner.dirty
    assert len(scheduled) == 1, "the planner's own writes scheduled an update"
    assert planner.update_if_dirty() is None
    calculator = planner._calculator
    # A drag: many plane events, one scheduled update, one recompute; the calculator is reused.
    x, y, z = PLANE_LPS.point_mm
    for step in range(1, 11):
        node.SetOrigin(-(x + 0.7 * step), -y, z)
    assert len(scheduled) == 2
    moved = planner.update_if_dirty()
    assert planner._calculator is calculator
    expected = FLRCalculator.from_labelmap(labels).compute(planes=[Plane((x + 7.0, y, z), PLANE_LPS.normal)])
    assert moved.result.figures == expected.figures
    assert moved.result.figures.resected_ml < first.result.figures.resected_ml
    # A change that does not touch the inputs (colour) wakes the planner but recomputes nothing.
    segmentation.GetSegmentation().GetSegment("liver").SetColor(0.2, 0.3, 0.4)
    assert len(scheduled) == 3
    assert planner.update_if_dirty() is None and planner._calculator is calculator
    # Editing the liver: one schedule for the edit, a new calculator, the table follows.
    liver = _segment_array(segmentation, "liver", volume)
    liver[:, :, 30:] = 0
    slicer.util.updateSegmentBinaryLabelmapFromArray(liver, segmentation, "liver", volume)
    assert len(scheduled) == 4
    edited = planner.update_if_dirty()
    assert planner._calculator is not calculator
    assert edited.result.figures.functional_liver_ml == pytest.approx(liver.sum() * np.prod(SPACING) / 1000.0)
    values = scene_flr.table_values(planner.table_node)
    assert values["functional_liver_ml"][0] == f"{edited.result.figures.functional_liver_ml:.1f}"
    # Parameters mark dirty too; after remove_observers nothing is scheduled any more.
    planner.set_parameters(margin_mm=4.0)
    assert len(scheduled) == 5 and planner.update_if_dirty() is not None
    planner.remove_observers()
    node.SetOrigin(-x, -y, z)
    segmentation.GetSegmentation().GetSegment("liver").SetColor(0.5, 0.5, 0.5)
    assert len(scheduled) == 5 and not planner.dirty


def test_flip_turns_the_plane_round_and_resects_the_other_side(case, mrml_scene):
    import slicer

    labels, volume, segmentation = case
    node = _ras_plane_node(mrml_scene, PLANE_LPS)
    first = scene_flr.compute_flr_in_scene(segmentation, volume, plane_nodes=[node])
    scene_flr.flip_plane_normal(node)
    flipped = scene_flr.compute_flr_in_scene(segmentation, volume, plane_nodes=[node])
    expected = FLRCalculator.from_labelmap(labels).compute(planes=[Plane(PLANE_LPS.point_mm, tuple(
        -n for n in PLANE_LPS.normal))])
    assert flipped.result.figures == expected.figures
    before, after = _array(first.result.resected) != 0, _array(flipped.result.resected) != 0
    assert not np.any(before & after) and np.count_nonzero(after) > 0
    # a three-point plane keeps its points: the second and third change places
    three = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", "three points")
    three.SetPlaneType(slicer.vtkMRMLMarkupsPlaneNode.PlaneType3Points)
    for point in ((0, 0, 0), (10, 0, 0), (0, 10, 0)):
        three.AddControlPoint(*point)
    points = {tuple(three.GetNthControlPointPositionWorld(i)) for i in range(3)}
    scene_flr.flip_plane_normal(three)
    normal = [0.0, 0.0, 0.0]
    three.GetNormalWorld(normal)
    assert normal == pytest.approx([0.0, 0.0, -1.0])
    assert {tuple(three.GetNthControlPointPositionWorld(i)) for i in range(3)} == points
    with pytest.raises(ValueError, match="not fully placed"):
        scene_flr.flip_plane_normal(mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", "unplaced"))


def test_an_edited_output_is_kept_and_resected_as_painted_from_then_on(case, mrml_scene):
    import slicer

    labels, volume, segmentation = case
    node = _ras_plane_node(mrml_scene, PLANE_LPS)
    scheduled = []
    planner = scene_flr.FLRPlanner(segmentation, volume, schedule_update=lambda: scheduled.append(1),
                                   plane_nodes=[node])
    first = planner.update()
    resection_id = first.segment_ids["resection"]
    edited = _segment_array(segmentation, resection_id, volume)
    edited[:, 14:20, 6:12] = (_array(labels)[:, 14:20, 6:12] > 0)  # the user adds liver to the resection
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, segmentation, resection_id, volume)
    assert planner.dirty
    second = planner.update_if_dirty()
    segment = segmentation.GetSegmentation().GetSegment(resection_id)
    assert second.released == (("resection", resection_id),)
    assert not scene_flr.is_generated(segment) and planner.parameters.resection_segment_id == resection_id
    assert np.array_equal(_segment_array(segmentation, resection_id, volume), edited), "the edit was overwritten"
    mask = sitk.GetImageFromArray(edited)
    mask.CopyInformation(labels)
    expected = FLRCalculator.from_labelmap(labels).compute(resection_mask=mask, planes=[PLANE_LPS])
    assert second.result.figures == expected.figures
    assert second.segment_ids["resection"] != resection_id  # a new computed output beside the user's
    # nothing changed since: no new release, no recompute
    assert planner.update_if_dirty() is None or planner.last.released == ()
    # an edited remnant keeps what it holds; the rest of the liver is resected
    remnant_id = second.segment_ids["remnant"]
    remnant = _segment_array(segmentation, remnant_id, volume)
    remnant[:, :, 22:] = 0
    slicer.util.updateSegmentBinaryLabelmapFromArray(remnant, segmentation, remnant_id, volume)
    third = planner.update_if_dirty()
    assert third.released == (("remnant", remnant_id),)
    kept = _array(third.result.remnant) != 0
    assert np.array_equal(kept, (remnant != 0) & (_array(labels) == 1))
    planner.remove_observers()


def test_observation_can_be_turned_off_and_on(case, mrml_scene):
    import slicer

    labels, volume, segmentation = case
    scheduled = []
    planner = scene_flr.FLRPlanner(segmentation, volume, schedule_update=lambda: scheduled.append(1), observe=False)
    planner.update()
    liver = _segment_array(segmentation, "liver", volume)
    liver[:, :, 30:] = 0
    slicer.util.updateSegmentBinaryLabelmapFromArray(liver, segmentation, "liver", volume)
    assert not planner.dirty and not planner.observing, "an unobserved planner reacted to an edit"
    planner.set_observing(True)
    assert planner.dirty and planner.observing, "turning observation on must catch up with missed edits"
    updated = planner.update_if_dirty()
    assert updated.result.figures.functional_liver_ml == pytest.approx(liver.sum() * np.prod(SPACING) / 1000.0)
    planner.set_parameters(margin_mm=None)  # unchanged parameters: nothing to do
    assert not planner.dirty
    planner.set_observing(False)
    slicer.util.updateSegmentBinaryLabelmapFromArray((_array(labels) == 1).astype(np.uint8), segmentation, "liver", volume)
    assert not planner.dirty
