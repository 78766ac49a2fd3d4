"""One segment-role rule for measurements, FLR, HU range and TNM staging, and segment masks read only when changed.

A hand-added second tumor segment (no terminology, name "Tumor 2") must count in every consumer: the measurements
table, the FLR tumor volume, the HU-range region and the TNM lesion diameters.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicer.util
import vtk

from LiverTumorSegLib.core.box_masks import BoxMask, bounding_box, union
from LiverTumorSegLib.core.flr import FLRCalculator
from LiverTumorSegLib.core.measurements import measure_labelmap
from LiverTumorSegLib.scene import flr as scene_flr
from LiverTumorSegLib.scene import results as scene_results
from LiverTumorSegLib.scene import segmentations
from LiverTumorSegLib.scene import volumes as scene_bridge
from LiverTumorSegLib.scene.masks import SegmentMaskReader
from LiverTumorSegLib.scene.roles import MissingLiverSegment, find_segment_roles
from LiverTumorSegLib.scene.tables import read_rows
from TNMStagingLib.scene import staging as scene_staging

_A = math.radians(20.0)
DIRECTION = (math.cos(_A), -math.sin(_A), 0.0, math.sin(_A), math.cos(_A), 0.0, 0.0, 0.0, 1.0)
SPACING = (1.2, 1.1, 2.5)
SHAPE_ZYX = (16, 34, 40)


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin((-20.0, 15.0, 30.0))
    image.SetDirection(DIRECTION)
    return image


@pytest.fixture
def case(mrml_scene):
    """Oblique CT with a coded Liver / Liver tumor segmentation, and a hand-painted "Tumor 2" (no terminology)."""
    z, y, x = np.indices(SHAPE_ZYX)
    labels = np.zeros(SHAPE_ZYX, np.uint8)
    labels[((x - 20) / 16.0) ** 2 + ((y - 17) / 13.0) ** 2 + ((z - 8) / 6.5) ** 2 <= 1] = 1
    labels[((x - 27) / 4.0) ** 2 + ((y - 17) / 4.0) ** 2 + ((z - 8) / 2.5) ** 2 <= 1] = 2
    second = np.zeros(SHAPE_ZYX, np.uint8)
    second[6:10, 10:14, 9:14] = 1  # inside the liver, apart from the coded tumor
    ct = _image(((x * 7 + y * 3 + z * 11) % 120 - 20).astype(np.int16))
    volume = scene_bridge.volume_node_from_image(ct, "CT", scene=mrml_scene)
    segmentation = segmentations.labelmap_to_segmentation(_image(labels), volume, scene=mrml_scene)
    second_id = segmentation.GetSegmentation().AddEmptySegment("", "Tumor 2")
    slicer.util.updateSegmentBinaryLabelmapFromArray(second, segmentation, second_id, volume)
    truth = labels.copy()
    truth[second == 1] = 2
    return volume, segmentation, second_id, _image(truth)


def _assert_same(measured, expected) -> None:
    """Equal measurements up to float rounding (a cropped image moves the origin, not the voxels)."""
    assert measured.liver_volume_ml == pytest.approx(expected.liver_volume_ml)
    assert measured.tumor_volume_ml == pytest.approx(expected.tumor_volume_ml)
    assert measured.parenchyma_volume_ml == pytest.approx(expected.parenchyma_volume_ml)
    assert len(measured.lesions) == len(expected.lesions)
    for mine, theirs in zip(measured.lesions, expected.lesions, strict=True):
        assert (mine.id, mine.volume_ml) == (theirs.id, pytest.approx(theirs.volume_ml))
        assert mine.longest_axial_diameter_mm == pytest.approx(theirs.longest_axial_diameter_mm)
        assert mine.centroid_mm == pytest.approx(theirs.centroid_mm, abs=1e-9)


def test_a_hand_added_tumor_counts_in_measurements_flr_hu_range_and_tnm(case, mrml_scene):
    volume, segmentation, second_id, truth = case
    roles = find_segment_roles(segmentation)
    assert roles.liver_id == "liver" and roles.tumor_ids == ("liver_tumor", second_id)
    expected = measure_labelmap(truth)
    assert len(expected.lesions) == 2

    table = scene_results.update_measurements_table(segmentation, volume)
    rows = {row["Structure"]: row for row in read_rows(table)}
    assert rows["Tumor (total)"]["Volume (mL)"] == pytest.approx(expected.tumor_volume_ml)
    assert rows["Tumor (total)"]["Lesion count"] == 2
    assert rows["Liver parenchyma"]["Volume (mL)"] == pytest.approx(expected.parenchyma_volume_ml)

    flr = scene_flr.compute_flr_in_scene(segmentation, volume)
    assert flr.result.figures == FLRCalculator.from_labelmap(truth).compute().figures
    assert flr.result.figures.tumor_ml == pytest.approx(expected.tumor_volume_ml)

    segment_id = scene_results.add_hu_range_segment(segmentation, volume, -1000, 3000)  # every voxel of the region
    hu_mask = sitk.GetArrayFromImage(segmentations.segment_mask(segmentation, segment_id, volume))
    assert np.array_equal(hu_mask != 0, sitk.GetArrayViewFromImage(truth) > 0), "the region is the whole liver"

    diameters = scene_staging.lesion_diameters_mm(segmentation, volume)
    assert diameters == [round(lesion.longest_axial_diameter_mm, 1) for lesion in expected.lesions]
    # derived segments (the HU range, the FLR outputs) never become inputs
    assert find_segment_roles(segmentation) == roles


def test_liver_found_by_terminology_after_a_rename_and_by_name_without_one(case, mrml_scene):
    volume, segmentation, _, _ = case
    segmentation.GetSegmentation().GetSegment("liver").SetName("Leber (corrected)")
    assert find_segment_roles(segmentation).liver_id == "liver"
    hand_made = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "hand made")
    hand_made.GetSegmentation().AddEmptySegment("a", "LIVER ")
    hand_made.GetSegmentation().AddEmptySegment("b", "Metastasis 3")
    hand_made.GetSegmentation().AddEmptySegment("c", "Spleen")
    roles = find_segment_roles(hand_made)
    assert roles.liver_id == "a" and roles.tumor_ids == ("b",)
    assert find_segment_roles(hand_made, exclude=("b",)).tumor_ids == ()
    hand_made.GetSegmentation().RemoveSegment("a")
    with pytest.raises(MissingLiverSegment, match="no liver segment.*'Metastasis 3', 'Spleen'"):
        find_segment_roles(hand_made)


def test_segmentation_measurer_equals_measure_labelmap_and_reads_only_changed_segments(case):
    volume, segmentation, second_id, truth = case
    measurer = scene_results.SegmentationMeasurer(segmentation, volume)
    measured, key = measurer.measure()
    full = scene_results.current_labelmap(segmentation, volume)
    assert np.array_equal(sitk.GetArrayViewFromImage(full), sitk.GetArrayViewFromImage(truth))
    _assert_same(measured, measure_labelmap(truth))
    reads = measurer.reader.reads
    assert measurer.measure()[1] == key and measurer.reader.reads == reads, "nothing changed, nothing read"

    # an edit of the hand-made tumor (its own labelmap layer): only that segment is read again
    grown = np.zeros(SHAPE_ZYX, np.uint8)
    grown[6:10, 10:14, 9:16] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(grown, segmentation, second_id, volume)
    measured, new_key = measurer.measure()
    assert measurer.reader.reads == reads + 1 and new_key[0] == key[0] and new_key[1] != key[1]
    truth_array = sitk.GetArrayFromImage(truth)
    truth_array[grown == 1] = 2
    edited = sitk.GetImageFromArray(truth_array)
    edited.CopyInformation(truth)
    _assert_same(measured, measure_labelmap(edited))


def test_reader_takes_the_layer_directly_or_exports_through_a_transform(case, mrml_scene):
    volume, segmentation, _, truth = case
    direct = SegmentMaskReader(segmentation, volume).mask("liver_tumor")
    exported = sitk.GetArrayFromImage(segmentations.segments_mask(segmentation, ["liver_tumor"], volume))
    assert np.array_equal(direct.full(), exported != 0)
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 2.4)  # two voxels along x (spacing 1.2 mm, rotated grid: resampled)
    transform.SetMatrixTransformToParent(matrix)
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    moved = SegmentMaskReader(segmentation, volume).mask("liver_tumor")
    exported = sitk.GetArrayFromImage(segmentations.segments_mask(segmentation, ["liver_tumor"], volume))
    assert np.array_equal(moved.full(), exported != 0) and not np.array_equal(moved.full(), direct.full())
    volume.SetAndObserveTransformNodeID(transform.GetID())  # both under one transform: the direct read again
    assert np.array_equal(SegmentMaskReader(segmentation, volume).mask("liver_tumor").full(), direct.full())


def test_box_masks():
    rng = np.random.default_rng(3)
    array = np.zeros((9, 11, 13), bool)
    array[2:5, 3:9, 4:6] = rng.random((3, 6, 2)) > 0.3
    array[3, 5, 4] = True
    mask = BoxMask.from_array(array)
    assert np.array_equal(mask.full(), array) and mask.count == int(array.sum())
    assert bounding_box(np.zeros((3, 3, 3), bool)) is None and BoxMask.from_array(np.zeros((2, 2, 2))).is_empty
    other = np.zeros_like(array)
    other[7, 1, 12] = True
    both = union([mask, BoxMask.from_array(other), BoxMask.empty(array.shape)], array.shape)
    assert np.array_equal(both.full(), array | other)
    assert BoxMask.from_array(array).digest == mask.digest != both.digest
    shifted = BoxMask.from_array(array[1:], offset_zyx=(1, 0, 0), shape_zyx=array.shape)
    assert shifted.digest == mask.digest
