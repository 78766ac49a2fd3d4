"""The series picker on DICOM files as Slicer's database serves them, and a result's place: study, transform,
DICOM SEG export readiness, on an oblique CT under a transform (linear and Slicer's non-linear regularization grid).

``FakeDicomDatabase`` answers the ``ctkDICOMDatabase`` calls the module makes (``filesForSeries``, ``fileValue``
with "gggg,eeee" tags, multi-values joined by backslashes, ``seriesForFile``) from files read with pydicom.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from LiverTumorSegLib.core.measurements import measure_labelmap
from LiverTumorSegLib.core.terminology import segment_specs
from LiverTumorSegLib.io.dicom_write import write_ct_series
from LiverTumorSegLib.io.seg_nrrd import write_seg_nrrd
from LiverTumorSegLib.scene import dicom_database, segmentations
from LiverTumorSegLib.scene import results as scene_results
from LiverTumorSegLib.scene import volumes as scene_bridge


class FakeDicomDatabase:
    """The ``ctkDICOMDatabase`` methods the module uses, over the DICOM files of a folder."""

    def __init__(self, folder) -> None:
        self._headers = {str(p): pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.rglob("*.dcm"))}

    def filesForSeries(self, series_uid):  # noqa: N802 - ctkDICOMDatabase's name
        return [path for path, ds in self._headers.items() if ds.SeriesInstanceUID == series_uid]

    def seriesForFile(self, path):  # noqa: N802
        ds = self._headers.get(str(path))
        return str(ds.SeriesInstanceUID) if ds is not None else ""

    def fileValue(self, path, tag):  # noqa: N802
        group, element = (int(part, 16) for part in tag.split(","))
        element_value = self._headers[str(path)].get((group, element))
        if element_value is None:
            return ""
        value = element_value.value
        return "\\".join(str(v) for v in value) if isinstance(value, pydicom.multival.MultiValue) else str(value)


def _series(folder, description, slices, thickness, **tags):
    image = sitk.Image(8, 8, slices, sitk.sitkInt16)
    image.SetSpacing((2.0, 2.0, thickness))
    write_ct_series(image, folder, series_description=description, extra_tags=tags or None)


def test_picker_reads_the_database_and_prefers_portal_venous(tmp_path):
    study = tmp_path / "study"
    _series(study / "art", "Arterial 1mm", 40, 1.0, ContrastBolusAgent="Iomeprol")
    _series(study / "pv", "Abdomen 3mm", 14, 3.0, ContrastBolusAgent="Iomeprol", ContrastBolusStartTime="101500",
            AcquisitionTime="101612")
    _series(study / "scout", "Topogram", 1, 1.0, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    database = FakeDicomDatabase(study)
    uids = dicom_database.series_in_folder(database, study)
    assert len(uids) == 3
    metadata = {m.description: m for m in (dicom_database.series_metadata(database, uid) for uid in uids)}
    assert metadata["Arterial 1mm"].slice_count == 40 and metadata["Arterial 1mm"].slice_thickness_mm == 1.0
    assert metadata["Topogram"].image_type == ("ORIGINAL", "PRIMARY", "LOCALIZER")
    assert metadata["Abdomen 3mm"].orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    choice = dicom_database.choose_from_database(database, uids)
    assert choice.best.description == "Abdomen 3mm"
    assert "portal venous (72 s after the contrast bolus)" in choice.reason


def _oblique_labels():
    z, y, x = np.indices((14, 30, 36))
    labels = np.zeros(z.shape, np.uint8)
    labels[((x - 18) / 14.0) ** 2 + ((y - 15) / 11.0) ** 2 + ((z - 7) / 5.5) ** 2 <= 1] = 1
    labels[((x - 22) / 4.0) ** 2 + ((y - 15) / 4.0) ** 2 + ((z - 7) / 2.5) ** 2 <= 1] = 2
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetOrigin((30.0, -12.0, 80.0))
    a = math.radians(25.0)
    image.SetDirection((math.cos(a), 0.0, math.sin(a), 0.0, 1.0, 0.0, -math.sin(a), 0.0, math.cos(a)))
    return image


def _transform(scene, kind: str):
    if kind == "linear":
        node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shear and shift")
        matrix = vtk.vtkMatrix4x4()
        matrix.SetElement(0, 1, 0.15)
        matrix.SetElement(2, 3, 12.0)
        node.SetMatrixTransformToParent(matrix)
        return node
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "acquisition transform")  # as DICOMScalarVolumePlugin
    grid = vtk.vtkImageData()
    grid.SetDimensions(4, 4, 4)
    grid.SetSpacing(40.0, 40.0, 40.0)
    grid.SetOrigin(-60.0, -60.0, 40.0)
    displacement = np.random.default_rng(1).normal(0.0, 3.0, (64, 3))
    grid.GetPointData().SetScalars(numpy_support.numpy_to_vtk(displacement, deep=True))
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid)
    node.SetAndObserveTransformToParent(transform)
    return node


@pytest.mark.parametrize("kind", ["linear", "grid"])
def test_result_lies_in_the_study_under_the_ct_transform_voxel_for_voxel(mrml_scene, tmp_path, kind):
    labels = _oblique_labels()
    ct = scene_bridge.volume_node_from_image(sitk.Cast(labels, sitk.sitkInt16) * 50, "CT", scene=mrml_scene)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient"), "Study")
    hierarchy.CreateItem(study, ct)
    transform = _transform(mrml_scene, kind)
    ct.SetAndObserveTransformNodeID(transform.GetID())
    out = tmp_path / "out"
    out.mkdir()
    sitk.WriteImage(labels, str(out / "labels.nrrd"))
    write_seg_nrrd(labels, out / "segmentation.seg.nrrd", segment_specs())
    (out / "results.json").write_text(json.dumps({"models": {"liver": {"id": "demo-liver"}, "tumor": None}}))
    node = scene_results.import_results(out, ct)
    assert node.GetTransformNodeID() == transform.GetID(), "the result must follow the CT's transform"
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
    for segment_id, value in (("liver", 1), ("liver_tumor", 2)):
        mask = sitk.GetArrayFromImage(segmentations.segment_mask(node, segment_id, ct))
        assert np.array_equal(mask != 0, sitk.GetArrayViewFromImage(labels) == value), segment_id
    measured = scene_results.measure_segmentation(node, ct)
    assert measured.tumor_volume_ml == pytest.approx(measure_labelmap(labels).tumor_volume_ml)
    # What the result would be at the scene root (the old behaviour): not the CT's voxels.
    node.SetAndObserveTransformNodeID(None)
    untransformed = sitk.GetArrayFromImage(segmentations.segment_mask(node, "liver", ct))
    assert not np.array_equal(untransformed != 0, sitk.GetArrayViewFromImage(labels) == 1)
    node.SetAndObserveTransformNodeID(transform.GetID())

    problems = dicom_database.dicom_seg_export_problems(node)
    assert problems == ["the CT 'CT' was not loaded from the DICOM database (no DICOM instance UIDs): load it "
                        "with 'Load DICOM' or the DICOM module"]
    ct.SetAttribute(dicom_database.INSTANCE_UIDS_ATTRIBUTE, "1.2.3.1 1.2.3.2")  # as the DICOM plugins set it
    assert dicom_database.dicom_seg_export_problems(node) == []
    scene_results.add_hu_range_segment(node, ct, 0, 100)
    assert dicom_database.dicom_seg_export_problems(node) == []
    bare = node.GetSegmentation().GetSegment(node.GetSegmentation().AddEmptySegment("", "no terminology"))
    assert dicom_database.dicom_seg_export_problems(node) == [], "a new segment has Slicer's default (Tissue)"
    bare.SetTerminology("")
    assert dicom_database.dicom_seg_export_problems(node) == ["segment 'no terminology' has no terminology"]


def test_hardening_the_regularization_transform_resamples_the_ct(mrml_scene):
    """Why the result follows the CT's transform instead of being computed on the hardened CT: hardening Slicer's
    non-linear regularization transform resamples the voxels (another grid, interpolated HU), while a result under
    the same transform keeps the acquired voxels exactly (the test above)."""
    labels = _oblique_labels()
    ct = scene_bridge.volume_node_from_image(sitk.Cast(labels, sitk.sitkInt16) * 50, "CT", scene=mrml_scene)
    acquired = slicer.util.arrayFromVolume(ct).copy()
    ct.SetAndObserveTransformNodeID(_transform(mrml_scene, "grid").GetID())
    ct.HardenTransform()
    hardened = slicer.util.arrayFromVolume(ct)
    assert hardened.shape != acquired.shape or not np.array_equal(hardened, acquired)
