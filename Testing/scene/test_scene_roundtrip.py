"""Scene bridge round trips: SimpleITK <-> volume node, labelmap -> segmentation -> .seg.nrrd -> masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.core.terminology import load_segment_definitions
from LiverTumorSegLib.resources import TERMINOLOGY_FILE
from LiverTumorSegLib.scene import segmentations
from LiverTumorSegLib.scene import volumes as scene

LIVER_ENTRY = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"
)
TUMOR_ENTRY = (
    "Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure"
    "~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~SCT^10200004^Liver~^^"
)


def _rotation_zx(z_deg: float, x_deg: float) -> np.ndarray:
    z, x = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    return rz @ rx


@pytest.fixture
def oblique_case():
    """CT (int16 HU) and labels (1 liver, 2 tumor) on a grid rotated 30 deg about z and 10 deg about x,
    anisotropic spacing, odd origin; a shape touches three faces of the grid, tumor inside and outside
    the liver."""
    shape_zyx = (11, 19, 23)
    z, y, x = np.indices(shape_zyx)
    labels = np.zeros(shape_zyx, dtype=np.uint8)
    labels[((x - 10) / 8.0) ** 2 + ((y - 9) / 6.0) ** 2 + ((z - 5) / 4.0) ** 2 <= 1.0] = 1
    labels[0:3, 0:4, 18:23] = 1  # box in a corner: touches three faces of the grid
    labels[((x - 9) / 2.5) ** 2 + ((y - 8) / 2.0) ** 2 + ((z - 5) / 1.5) ** 2 <= 1.0] = 2
    labels[9, 17, 1] = 2  # a single voxel near the opposite corner (the union extent is not the whole grid)
    ct = sitk.GetImageFromArray((((x * 7 + y * 13 + z * 29) % 400) - 150).astype(np.int16))
    ct.SetSpacing((0.71, 0.83, 2.5))
    ct.SetOrigin((-187.3, 42.9, -611.7))
    ct.SetDirection(_rotation_zx(30.0, 10.0).ravel().tolist())
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(ct)
    return ct, label_image


def _assert_same_geometry(image: sitk.Image, expected: sitk.Image) -> None:
    assert image.GetSize() == expected.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), expected.GetOrigin(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), expected.GetSpacing(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), expected.GetDirection(), rtol=0, atol=1e-6)


def test_volume_node_round_trip_keeps_pixels_and_geometry(mrml_scene, oblique_case):
    ct, _ = oblique_case
    node = scene.volume_node_from_image(ct, "CT", scene=mrml_scene)
    assert node.GetScene() is mrml_scene and node.GetDisplayNode() is not None
    back = scene.image_from_volume_node(node)
    assert back.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(ct))
    _assert_same_geometry(back, ct)


def test_volume_node_geometry_is_ras(mrml_scene, oblique_case):
    """Each voxel lands at the same physical point: MRML RAS = LPS with x and y negated."""
    ct, _ = oblique_case
    node = scene.volume_node_from_image(ct, "CT", scene=mrml_scene)
    ijk_to_ras = __import__("vtk").vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    for index in [(0, 0, 0), (22, 0, 0), (0, 18, 0), (0, 0, 10), (22, 18, 10), (7, 3, 9)]:
        ras = ijk_to_ras.MultiplyPoint((*index, 1.0))[:3]
        lps = ct.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose(ras, (-lps[0], -lps[1], lps[2]), rtol=0, atol=1e-9)


@pytest.mark.parametrize("crop", [False, True], ids=["full-grid", "cropped-extent"])
def test_segmentation_round_trip_through_seg_nrrd_is_voxel_exact(mrml_scene, oblique_case, tmp_path, crop):
    ct, labels = oblique_case
    volume = scene.volume_node_from_image(ct, "CT", scene=mrml_scene)
    segmentation = segmentations.labelmap_to_segmentation(labels, volume, name="Liver CT segmentation")
    path = segmentations.save_segmentation(segmentation, tmp_path / "case.seg.nrrd", crop_to_minimum_extent=crop)
    written = sitk.ReadImage(str(path))
    full_size = ct.GetSize()
    expected_size = (22, 18, 10) if crop else full_size  # cropped: x from 1, y up to 17, z up to 9
    assert written.GetSize() == expected_size

    mrml_scene.Clear(0)  # a fresh scene: nothing left but the file
    volume = scene.volume_node_from_image(ct, "CT", scene=mrml_scene)
    loaded = segmentations.load_segmentation(path)
    assert loaded.GetName() == "case"
    label_zyx = sitk.GetArrayViewFromImage(labels)
    for name, value in [("Liver", 1), ("Liver tumor", 2)]:
        mask = segmentations.segment_mask(loaded, name, volume)
        assert mask.GetPixelID() == sitk.sitkUInt8
        _assert_same_geometry(mask, ct)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(mask), (label_zyx == value).astype(np.uint8))


def test_segments_keep_names_colors_and_terminology_after_reload(mrml_scene, oblique_case, tmp_path):
    ct, labels = oblique_case
    volume = scene.volume_node_from_image(ct, "CT", scene=mrml_scene)
    path = segmentations.save_segmentation(segmentations.labelmap_to_segmentation(labels, volume), tmp_path / "s.seg.nrrd")
    header = sitk.ReadImage(str(path))
    assert header.GetMetaData("Segment0_Tags") == f"TerminologyEntry:{LIVER_ENTRY}|"
    assert header.GetMetaData("Segment1_Tags") == f"TerminologyEntry:{TUMOR_ENTRY}|"
    segmentation = segmentations.load_segmentation(path, scene=mrml_scene).GetSegmentation()
    expected = [
        ("liver", "Liver", (221, 130, 101), LIVER_ENTRY),
        ("liver_tumor", "Liver tumor", (144, 238, 144), TUMOR_ENTRY),
    ]
    assert segmentation.GetNumberOfSegments() == len(expected)
    for index, (segment_id, name, rgb255, entry) in enumerate(expected):
        segment = segmentation.GetNthSegment(index)
        assert segmentation.GetNthSegmentID(index) == segment_id
        assert segment.GetName() == name
        np.testing.assert_allclose(segment.GetColor(), np.array(rgb255) / 255.0, atol=1e-5)
        assert segment.GetTerminology() == entry
        assert not segment.GetNameAutoGenerated() and not segment.GetColorAutoGenerated()


def test_terminology_entries_match_slicers_serializer(slicer_app):
    """Our tag strings equal what vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry builds."""
    import slicer

    serialize = slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry
    raw = {
        entry["id"]: entry["terminology"] for entry in json.loads(TERMINOLOGY_FILE.read_text())["segments"]
    }
    for segment_id, definition in load_segment_definitions().items():
        t = raw[segment_id]
        parts = [t["context"]]
        for key in ("category", "type", "type_modifier"):
            code = t[key] or {}
            parts += [
                code.get("CodeValue", ""),
                code.get("CodingSchemeDesignator", ""),
                code.get("CodeMeaning", ""),
            ]
        parts.append(t["anatomic_context"])
        for key in ("anatomic_region", "anatomic_region_modifier"):
            code = t[key] or {}
            parts += [
                code.get("CodeValue", ""),
                code.get("CodingSchemeDesignator", ""),
                code.get("CodeMeaning", ""),
            ]
        assert definition.terminology_entry == serialize(*parts), segment_id
    assert load_segment_definitions()["liver"].terminology_entry == LIVER_ENTRY
    assert load_segment_definitions()["liver_tumor"].terminology_entry == TUMOR_ENTRY


def test_segmentation_references_the_volume_geometry(mrml_scene, oblique_case):
    import slicer

    ct, labels = oblique_case
    volume = scene.volume_node_from_image(ct, "CT", scene=mrml_scene)
    segmentation = segmentations.labelmap_to_segmentation(labels, volume)
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert segmentation.GetNodeReference(role) is volume
    assert segmentation.GetSegmentation().GetNumberOfLayers() == 1  # one shared labelmap
    # Slicer's own helper, reference geometry taken from the segmentation node, agrees with the labels.
    liver = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, "liver")
    np.testing.assert_array_equal(liver, sitk.GetArrayViewFromImage(labels) == 1)


def test_empty_segment_is_created_and_stays_empty(mrml_scene, oblique_case, tmp_path):
    ct, labels = oblique_case
    liver_only = sitk.Cast(labels == 1, sitk.sitkUInt8)
    volume = scene.volume_node_from_image(ct, "CT", scene=mrml_scene)
    path = segmentations.save_segmentation(
        segmentations.labelmap_to_segmentation(liver_only, volume), tmp_path / "e.seg.nrrd"
    )
    loaded = segmentations.load_segmentation(path)
    tumor = segmentations.segment_mask(loaded, "liver_tumor", volume)  # by id
    assert loaded.GetSegmentation().GetNumberOfSegments() == 2
    assert not sitk.GetArrayViewFromImage(tumor).any()


def test_works_on_a_scene_other_than_slicer_mrmlScene(slicer_app, oblique_case, tmp_path):
    import slicer

    ct, labels = oblique_case
    other = slicer.vtkMRMLScene()
    volume = scene.volume_node_from_image(ct, "CT", scene=other)
    segmentation = segmentations.labelmap_to_segmentation(labels, volume)  # the volume's scene by default
    assert segmentation.GetScene() is other
    path = segmentations.save_segmentation(segmentation, tmp_path / "o.seg.nrrd")
    loaded = segmentations.load_segmentation(path, scene=other)
    assert loaded.GetScene() is other and slicer.mrmlScene.GetNodeByID(loaded.GetID()) is not loaded
    tumor = segmentations.segment_mask(loaded, "Liver tumor", volume)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(tumor), sitk.GetArrayViewFromImage(labels) == 2)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda image: image.SetOrigin((image.GetOrigin()[0] + 0.5, *image.GetOrigin()[1:])), "origin"),
        (lambda image: image.SetSpacing((0.71, 0.83, 3.0)), "spacing"),
        (lambda image: image.SetDirection(np.eye(3).ravel().tolist()), "direction"),
    ],
    ids=["origin", "spacing", "direction"],
)
def test_labelmap_off_the_reference_grid_is_refused(mrml_scene, oblique_case, change, message):
    ct, labels = oblique_case
    volume = scene.volume_node_from_image(ct, "CT", scene=mrml_scene)
    moved = sitk.Image(labels)
    change(moved)
    with pytest.raises(ValueError, match=rf"not on the grid of reference volume 'CT'.*{message}"):
        segmentations.labelmap_to_segmentation(moved, volume)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_labelmap_of_another_size_is_refused(mrml_scene, oblique_case):
    ct, labels = oblique_case
    volume = scene.volume_node_from_image(ct, "CT", scene=mrml_scene)
    smaller = labels[:, :, :-1]
    with pytest.raises(ValueError, match=r"size \(23, 19, 10\) vs \(23, 19, 11\)"):
        segmentations.labelmap_to_segmentation(smaller, volume)


def test_unknown_segment_id_and_unused_labels(mrml_scene, oblique_case):
    ct, labels = oblique_case
    volume = scene.volume_node_from_image(ct, "CT", scene=mrml_scene)
    with pytest.raises(KeyError, match="'spleen'.*known: liver, liver_tumor"):
        segmentations.labelmap_to_segmentation(labels, volume, segments={1: "liver", 3: "spleen"})
    with pytest.warns(segmentations.SegmentationLabelWarning, match=r"label values \[2\]"):
        segmentation = segmentations.labelmap_to_segmentation(labels, volume, segments={1: "liver"})
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    with pytest.raises(KeyError, match="no segment 'Liver tumor'"):
        segmentations.segment_mask(segmentation, "Liver tumor", volume)


def test_file_errors_name_the_file(mrml_scene, tmp_path):
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    with pytest.raises(ValueError, match="must end with .seg.nrrd"):
        segmentations.save_segmentation(segmentation, tmp_path / "case.nrrd")
    with pytest.raises(FileNotFoundError, match="missing.seg.nrrd"):
        segmentations.load_segmentation(tmp_path / "missing.seg.nrrd")


def test_core_written_seg_nrrd_opens_in_slicer_with_our_segments(mrml_scene, oblique_case, tmp_path):
    """The worker's slicer-free writer (seg_nrrd + segment_specs) gives the same segments as the bridge."""
    from LiverTumorSegLib.core.terminology import segment_specs
    from LiverTumorSegLib.io.seg_nrrd import write_seg_nrrd

    ct, labels = oblique_case
    path = write_seg_nrrd(labels, tmp_path / "worker.seg.nrrd", segment_specs())
    volume = scene.volume_node_from_image(ct, "CT", scene=mrml_scene)
    segmentation = segmentations.load_segmentation(path)
    segments = segmentation.GetSegmentation()
    assert [segments.GetNthSegmentID(i) for i in range(segments.GetNumberOfSegments())] == [
        "liver",
        "liver_tumor",
    ]
    assert [segments.GetNthSegment(i).GetTerminology() for i in range(2)] == [LIVER_ENTRY, TUMOR_ENTRY]
    for name, value in [("Liver", 1), ("Liver tumor", 2)]:
        mask = segmentations.segment_mask(segmentation, name, volume)
        np.testing.assert_array_equal(
            sitk.GetArrayViewFromImage(mask), sitk.GetArrayViewFromImage(labels) == value
        )


def test_volume_input_is_checked_before_the_scene_changes(mrml_scene):
    nodes_before = mrml_scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="64-bit integer"):
        scene.volume_node_from_image(sitk.Image(4, 5, 6, sitk.sitkInt64), "big", scene=mrml_scene)
    with pytest.raises(ValueError, match="3D scalar image"):
        scene.volume_node_from_image(sitk.Image(4, 5, sitk.sitkInt16), "flat", scene=mrml_scene)
    assert mrml_scene.GetNumberOfNodes() == nodes_before


def test_segment_definitions_file_errors_name_the_file(tmp_path):
    from LiverTumorSegLib.core.terminology import get_segment_definition

    good = json.loads(TERMINOLOGY_FILE.read_text())
    duplicate = tmp_path / "duplicate.json"
    duplicate.write_text(json.dumps({"segments": good["segments"] + good["segments"][:1]}))
    with pytest.raises(ValueError, match=r"duplicate\.json: duplicate segment id 'liver'"):
        load_segment_definitions(duplicate)
    bad_color = tmp_path / "bad_color.json"
    bad_color.write_text(json.dumps({"segments": [{**good["segments"][0], "color_rgb": [300, 0, 0]}]}))
    with pytest.raises(ValueError, match=r"bad_color\.json.*color_rgb"):
        load_segment_definitions(bad_color)
    with pytest.raises(KeyError, match="'spleen'.*known: liver, liver_tumor"):
        get_segment_definition("spleen")
