"""Worker results in the scene: segmentation node, measurements table that follows edits, HU-range segment."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicer.util

from LiverTumorSegLib.core.measurements import connected_components, measure_labelmap
from LiverTumorSegLib.core.terminology import load_segment_definitions, segment_specs
from LiverTumorSegLib.io.seg_nrrd import write_seg_nrrd
from LiverTumorSegLib.scene import results as scene_results
from LiverTumorSegLib.scene import segmentations
from LiverTumorSegLib.scene import volumes as scene
from LiverTumorSegLib.scene.tables import read_rows

SHAPE_ZYX = (12, 20, 24)


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    z, x = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    return rz @ rx


@pytest.fixture
def case():
    """CT (int16 HU) and 0/1/2 labels on an oblique, anisotropic grid: an ellipsoid liver holding a large
    and a small lesion, plus one tumor voxel outside the liver (three 26-connected lesions)."""
    z, y, x = np.indices(SHAPE_ZYX)
    labels = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    labels[((x - 12) / 10.0) ** 2 + ((y - 10) / 8.0) ** 2 + ((z - 6) / 5.0) ** 2 <= 1.0] = 1
    labels[((x - 8) / 3.0) ** 2 + ((y - 9) / 2.5) ** 2 + ((z - 6) / 2.0) ** 2 <= 1.0] = 2
    labels[5:7, 11:13, 16:18] = 2
    labels[1, 1, 22] = 2
    ct = sitk.GetImageFromArray((((x * 7 + y * 13 + z * 29) % 400) - 150).astype(np.int16))
    ct.SetSpacing((0.78, 0.91, 2.5))
    ct.SetOrigin((-171.2, 38.6, -402.5))
    ct.SetDirection(_rotation(25.0, 8.0).ravel().tolist())
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(ct)
    return ct, label_image


def write_output_folder(folder, labels: sitk.Image, *, demo: bool = True):
    """An output folder as the worker writes it: labels.nrrd, segmentation.seg.nrrd, results.json."""
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Cast(labels, sitk.sitkUInt8), str(folder / "labels.nrrd"), useCompression=True)
    write_seg_nrrd(labels, folder / "segmentation.seg.nrrd", segment_specs())
    measured = measure_labelmap(labels)
    results = {
        "liver_volume_ml": measured.liver_volume_ml,
        "tumor_volume_ml": measured.tumor_volume_ml,
        "lesions": [lesion.to_dict() for lesion in measured.lesions],
        "models": {
            "liver": {"id": "demo-liver", "demo_only": demo},
            "tumor": {"id": "demo-tumor", "demo_only": False},
        },
        "device": "cpu",
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture
def ct_in_study(mrml_scene, case):
    """The CT volume node under Patient / Study in the subject hierarchy; returns (volume, study item)."""
    ct, _ = case
    volume = scene.volume_node_from_image(ct, "CT", scene=mrml_scene)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient")
    study = hierarchy.CreateStudyItem(patient, "Study")
    hierarchy.CreateItem(study, volume)
    return volume, study


def _mask(segmentation_node, segment, volume) -> np.ndarray:
    return sitk.GetArrayFromImage(segmentations.segment_mask(segmentation_node, segment, volume))


def _segment_names(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def test_import_creates_segments_with_terminology_geometry_and_study(mrml_scene, case, ct_in_study, tmp_path):
    _, labels = case
    volume, study = ct_in_study
    node = scene_results.import_results(write_output_folder(tmp_path / "out", labels), volume)

    assert node.GetName() == "CT liver segmentation"
    definitions = load_segment_definitions()
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegmentID(i) for i in range(2)] == ["liver", "liver_tumor"]
    assert _segment_names(node) == ["Liver", "Liver tumor"]
    label_zyx = sitk.GetArrayViewFromImage(labels)
    for segment_id, value in [("liver", 1), ("liver_tumor", 2)]:
        segment = segmentation.GetSegment(segment_id)
        assert segment.GetTerminology() == definitions[segment_id].terminology_entry
        np.testing.assert_allclose(segment.GetColor(), definitions[segment_id].color_rgb, atol=1e-6)
        np.testing.assert_array_equal(_mask(node, segment_id, volume), label_zyx == value)
    assert "SCT^10200004^Liver" in segmentation.GetSegment("liver").GetTerminology()
    assert "SCT^108369006^Neoplasm" in segmentation.GetSegment("liver_tumor").GetTerminology()

    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert node.GetNodeReference(role) is volume
    expected = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    expected.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    geometry_name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    assert segmentation.GetConversionParameter(geometry_name) == (
        expected.GetSegmentation().GetConversionParameter(geometry_name)
    )

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_scene)
    parent = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node))
    assert parent == study == hierarchy.GetItemParent(hierarchy.GetItemByDataNode(volume))

    display = node.GetDisplayNode()
    assert display.GetVisibility() and display.GetVisibility2D() and display.GetVisibility3D()
    surface = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    assert segmentation.ContainsRepresentation(surface)
    assert segmentation.GetSegment("liver").GetRepresentation(surface).GetNumberOfPoints() > 0

    assert scene_results.result_info(node) == {
        "liver_model": "demo-liver",
        "tumor_model": "demo-tumor",
        "demo_models": True,
        "device": "cpu",
    }


def test_second_import_is_a_new_node_and_an_edited_first_one_is_detected(case, ct_in_study, tmp_path):
    _, labels = case
    volume, _ = ct_in_study
    folder = write_output_folder(tmp_path / "out", labels, demo=False)
    first = scene_results.import_results(folder, volume)
    assert scene_results.was_edited(first) is False
    edited = _mask(first, "liver", volume)
    edited[:, :, :12] = 0  # the user erases half of the liver
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, first, "liver", volume)
    assert scene_results.was_edited(first) is True

    second = scene_results.import_results(folder, volume)
    assert second is not first and second.GetName() == "CT liver segmentation (2)"
    assert scene_results.find_previous_results(volume) == [first, second]
    assert scene_results.was_edited(second) is False
    assert scene_results.result_info(second)["demo_models"] is False
    np.testing.assert_array_equal(_mask(first, "liver", volume), edited)  # the edited one is kept as it was


def test_per_lesion_segments_follow_the_lesion_table(case, ct_in_study, tmp_path):
    _, labels = case
    volume, _ = ct_in_study
    node = scene_results.import_results(
        write_output_folder(tmp_path / "out", labels), volume, per_lesion_segments=True
    )

    assert _segment_names(node) == ["Liver", "Liver tumor", "Lesion 1", "Lesion 2", "Lesion 3"]
    components = sitk.GetArrayFromImage(connected_components(labels == 2))
    tumor_entry = load_segment_definitions()["liver_tumor"].terminology_entry
    lesions = measure_labelmap(labels).lesions
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    for lesion in lesions:
        mask = _mask(node, f"Lesion {lesion.id}", volume)
        np.testing.assert_array_equal(mask, components == lesion.id)
        assert mask.sum() * voxel_ml == pytest.approx(lesion.volume_ml)
        segment = node.GetSegmentation().GetSegment(
            node.GetSegmentation().GetSegmentIdBySegmentName(f"Lesion {lesion.id}")
        )
        assert segment.GetTerminology() == tumor_entry
    assert [lesion.volume_ml for lesion in lesions] == sorted(
        (lesion.volume_ml for lesion in lesions), reverse=True
    )
    label_zyx = sitk.GetArrayViewFromImage(labels)
    np.testing.assert_array_equal(_mask(node, "Liver tumor", volume), label_zyx == 2)  # overlap kept
    np.testing.assert_array_equal(_mask(node, "Liver", volume), label_zyx == 1)


def test_labels_off_the_volume_grid_are_refused_and_the_scene_is_unchanged(
    mrml_scene, case, ct_in_study, tmp_path
):
    _, labels = case
    volume, _ = ct_in_study
    shifted = sitk.Image(labels)
    shifted.SetOrigin(tuple(o + 3.0 for o in labels.GetOrigin()))
    folder = write_output_folder(tmp_path / "out", shifted)
    nodes_before = mrml_scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match=r"labels\.nrrd.*not on the grid"):
        scene_results.import_results(folder, volume)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="labels.nrrd"):
        scene_results.import_results(tmp_path / "empty", volume)
    assert mrml_scene.GetNumberOfNodes() == nodes_before


def _assert_table_matches(table_node, labels: sitk.Image) -> None:
    measured = measure_labelmap(labels)
    rows = {row["Structure"]: row for row in read_rows(table_node)}
    assert list(rows) == ["Liver (total)", "Liver parenchyma", "Tumor (total)"] + [
        f"Lesion {lesion.id}" for lesion in measured.lesions
    ]
    assert rows["Liver (total)"]["Volume (mL)"] == pytest.approx(measured.liver_volume_ml, rel=1e-12)
    assert rows["Liver parenchyma"]["Volume (mL)"] == pytest.approx(measured.parenchyma_volume_ml, rel=1e-12)
    assert rows["Tumor (total)"]["Volume (mL)"] == pytest.approx(measured.tumor_volume_ml, rel=1e-12)
    assert rows["Tumor (total)"]["Lesion count"] == len(measured.lesions)
    for lesion in measured.lesions:
        row = rows[f"Lesion {lesion.id}"]
        assert row["Lesion id"] == lesion.id
        assert row["Volume (mL)"] == pytest.approx(lesion.volume_ml, rel=1e-12)
        assert row["Longest axial diameter (mm)"] == pytest.approx(
            lesion.longest_axial_diameter_mm, rel=1e-12
        )
        centroid = (row["Centroid L (mm)"], row["Centroid P (mm)"], row["Centroid S (mm)"])
        np.testing.assert_allclose(centroid, lesion.centroid_mm, rtol=0, atol=1e-9)
        assert row["Lesion count"] is None and rows["Liver (total)"]["Centroid L (mm)"] is None


def test_measurements_table_equals_measure_labelmap(mrml_scene, case, ct_in_study, tmp_path):
    _, labels = case
    volume, study = ct_in_study
    node = scene_results.import_results(write_output_folder(tmp_path / "out", labels), volume)
    table_node = scene_results.update_measurements_table(node, volume)
    assert table_node.GetName() == "CT liver segmentation measurements"
    _assert_table_matches(table_node, labels)
    assert len(measure_labelmap(labels).lesions) == 3
    table = table_node.GetTable()
    assert table.GetColumnByName("Volume (mL)").GetDataTypeAsString() == "double"
    assert table.GetColumnByName("Structure").GetClassName() == "vtkStringArray"
    assert table_node.GetColumnUnitLabel("Volume (mL)") == "mL"
    assert scene_results.find_measurements_table(node) is table_node
    assert scene_results.update_measurements_table(node, volume) is table_node  # updated in place
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_scene)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(table_node)) == study


def test_table_follows_an_edit_once_per_burst(case, ct_in_study, tmp_path):
    _, labels = case
    volume, _ = ct_in_study
    node = scene_results.import_results(write_output_folder(tmp_path / "out", labels), volume)
    scheduled = []
    updater = scene_results.MeasurementsUpdater(node, volume, schedule_update=lambda: scheduled.append(1))
    table_node = updater.update()
    assert scheduled == [] and updater.update_if_dirty() is None

    edited = sitk.GetArrayFromImage(labels)
    components = sitk.GetArrayFromImage(connected_components(labels == 2))
    edited[components == 2] = 1  # the second lesion was a false positive: erase it from the tumor ...
    tumor = (edited == 2).astype(np.uint8)
    slicer.util.updateSegmentBinaryLabelmapFromArray(tumor, node, "liver_tumor", volume)
    slicer.util.updateSegmentBinaryLabelmapFromArray((edited == 1).astype(np.uint8), node, "liver", volume)
    assert updater.dirty and scheduled == [1]  # several events, one scheduled update

    assert updater.update_if_dirty() is table_node
    edited_labels = sitk.GetImageFromArray(edited)
    edited_labels.CopyInformation(labels)
    _assert_table_matches(table_node, edited_labels)
    assert len(read_rows(table_node)) == 3 + 2

    scene_results.add_hu_range_segment(node, volume, 0, 60)  # an unrelated segment: dirty, nothing to redo
    assert scheduled == [1, 1] and updater.update_if_dirty() is None
    updater.remove_observers()
    slicer.util.updateSegmentBinaryLabelmapFromArray(
        (edited > 0).astype(np.uint8), node, "liver_tumor", volume
    )
    assert scheduled == [1, 1] and not updater.dirty


def test_hu_range_segment_counts_the_liver_voxels_in_range(case, ct_in_study, tmp_path):
    ct, labels = case
    volume, _ = ct_in_study
    node = scene_results.import_results(
        write_output_folder(tmp_path / "out", labels), volume, per_lesion_segments=True
    )
    before = {name: _mask(node, name, volume) for name in _segment_names(node)}
    segment_id = scene_results.add_hu_range_segment(node, volume, 0, 60)

    segment = node.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "Liver 0-60 HU"
    ct_zyx, label_zyx = sitk.GetArrayViewFromImage(ct), sitk.GetArrayViewFromImage(labels)
    expected = (label_zyx > 0) & (ct_zyx >= 0) & (ct_zyx <= 60)
    assert 0 < expected.sum() < (label_zyx > 0).sum()
    mask = _mask(node, segment_id, volume)
    assert mask.sum() == expected.sum()
    np.testing.assert_array_equal(mask, expected)
    for name, previous in before.items():  # no existing segment changed
        np.testing.assert_array_equal(_mask(node, name, volume), previous)

    in_tumor = scene_results.add_hu_range_segment(node, volume, -50.5, 120, within_segment="Liver tumor")
    assert node.GetSegmentation().GetSegment(in_tumor).GetName() == "Liver tumor -50.5 to 120 HU"
    expected_tumor = (label_zyx == 2) & (ct_zyx >= -50.5) & (ct_zyx <= 120)
    assert expected_tumor.any()
    np.testing.assert_array_equal(_mask(node, in_tumor, volume), expected_tumor)
    again = scene_results.add_hu_range_segment(node, volume, 0, 60)
    assert node.GetSegmentation().GetSegment(again).GetName() == "Liver 0-60 HU (2)"


def test_hu_range_segment_errors(mrml_scene, case, ct_in_study, tmp_path):
    _, labels = case
    volume, _ = ct_in_study
    node = scene_results.import_results(write_output_folder(tmp_path / "out", labels), volume)
    count = node.GetSegmentation().GetNumberOfSegments()
    with pytest.raises(ValueError, match="lower <= upper"):
        scene_results.add_hu_range_segment(node, volume, 60, 0)
    with pytest.raises(ValueError, match="lower <= upper"):
        scene_results.add_hu_range_segment(node, volume, math.nan, 0)
    with pytest.raises(ValueError, match="no segment 'Spleen'"):
        scene_results.add_hu_range_segment(node, volume, 0, 60, within_segment="Spleen")
    node.GetSegmentation().RemoveSegment("liver")
    with pytest.raises(ValueError, match="has no liver segment"):
        scene_results.add_hu_range_segment(node, volume, 0, 60)
    with pytest.raises(ValueError, match="has no liver segment"):
        scene_results.update_measurements_table(node, volume)
    assert node.GetSegmentation().GetNumberOfSegments() == count - 1
    with pytest.warns(scene_results.SceneResultsWarning, match="no voxel"):
        scene_results.add_hu_range_segment(node, volume, 5000, 6000, within_segment="Liver tumor")


def test_a_failure_after_the_node_was_added_leaves_the_scene_unchanged(
    mrml_scene, case, ct_in_study, tmp_path, monkeypatch
):
    _, labels = case
    volume, _ = ct_in_study
    folder = write_output_folder(tmp_path / "out", labels)
    nodes_before = mrml_scene.GetNumberOfNodes()

    def fail(node, volume_node):
        raise RuntimeError("subject hierarchy unavailable")

    monkeypatch.setattr(scene_results, "place_next_to", fail)
    with pytest.raises(RuntimeError, match="subject hierarchy"):
        scene_results.import_results(folder, volume, per_lesion_segments=True)
    assert mrml_scene.GetNumberOfNodes() == nodes_before
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationDisplayNode") == 0
    monkeypatch.undo()

    (folder / "results.json").write_text(json.dumps({"models": "not a mapping"}))
    with pytest.raises(ValueError, match=r"results\.json: expected an object"):
        scene_results.import_results(folder, volume)
    assert mrml_scene.GetNumberOfNodes() == nodes_before
