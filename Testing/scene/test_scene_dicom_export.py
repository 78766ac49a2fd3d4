"""Export to DICOM on slicer-core: the CURRENT (corrected) segments of a cascade result as SEG + SR referencing the
CT's instances, found through the DICOM database (``DICOM.instanceUIDs`` + fileForInstance) or the module's own
DICOM loading; the FLR of a planned resection in the report; a clear error without a DICOM source."""

from __future__ import annotations

import json
import math

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.core.measurements import connected_components, measure_labelmap
from LiverTumorSegLib.io.dicom_seg import pipeline_label_map, read_segmentation
from LiverTumorSegLib.io.dicom_sr import read_measurement_report
from LiverTumorSegLib.models.manifest import load_manifest
from LiverTumorSegLib.scene import dicom_export, segmentations
from LiverTumorSegLib.scene import flr as scene_flr
from LiverTumorSegLib.scene import input as scene_input
from LiverTumorSegLib.scene import results as scene_results
from LiverTumorSegLib.scene import volumes as scene_volumes

MODELS = {"liver": "demo-liver-segresnet", "tumor": "demo-tumor-segresnet"}


@pytest.fixture
def ct_and_result(mrml_scene, small_phantom_dicom, tmp_path):
    """The phantom CT loaded with the module's DICOM loader and a cascade-like result (its truth) imported."""
    volume, _ = scene_input.load_dicom_volume(small_phantom_dicom["dicom"], scene=mrml_scene)
    out = tmp_path / "worker_output"
    out.mkdir()
    truth = sitk.ReadImage(str(small_phantom_dicom["truth"]))
    sitk.WriteImage(truth, str(out / "labels.nrrd"))
    (out / "results.json").write_text(json.dumps({"models": {stage: {"id": model_id, "demo_only": True}
                                                             for stage, model_id in MODELS.items()}, "device": "cpu"}))
    segmentation = scene_results.import_results(out, volume)
    return volume, segmentation, truth


def _remove_smallest_lesion(segmentation, volume) -> sitk.Image:
    """A reader's correction: the smallest lesion painted away from the tumor segment; returns the new labels."""
    tumor = segmentations.segment_mask(segmentation, "liver_tumor", volume)
    lesions = sitk.GetArrayFromImage(connected_components(tumor))
    corrected = sitk.GetImageFromArray(((lesions > 0) & (lesions != lesions.max())).astype(np.uint8))
    corrected.CopyInformation(tumor)
    segmentations.set_segment_mask(segmentation, "liver_tumor", corrected, volume)
    return scene_results.current_labelmap(segmentation, volume)


def _volume(group: dict, meaning: str = "Volume") -> float:
    return next(m["value"] for m in group["measurements"] if m["name"][2] == meaning)


def test_corrected_segments_export_through_the_dicom_database(ct_and_result, small_phantom_dicom, tmp_path):
    volume, segmentation, truth = ct_and_result
    labels = _remove_smallest_lesion(segmentation, volume)
    assert measure_labelmap(labels).lesions != measure_labelmap(truth).lesions  # really corrected
    files = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: str(p)
             for p in sorted(small_phantom_dicom["dicom"].iterdir())}
    volume.SetAttribute("LiverTumorSeg.SourceFolder", "")  # as loaded by Slicer's DICOM module: UIDs only
    volume.SetAttribute(dicom_export.DICOM_UIDS_ATTRIBUTE, " ".join(files))
    imported = []
    paths = dicom_export.export_to_dicom_database(segmentation, volume, tmp_path / "export",
                                                  file_for_instance=lambda uid: files.get(uid, ""),
                                                  import_files=imported.extend)
    assert [p.name for p in paths] == ["segmentation.dcm", "report.dcm"] and imported == paths
    seg = pydicom.dcmread(paths[0])
    ct = scene_volumes.image_from_volume_node(volume)
    decoded = read_segmentation(seg, ct, label_for_segment=pipeline_label_map(seg))
    assert np.array_equal(sitk.GetArrayFromImage(decoded), sitk.GetArrayFromImage(labels))  # the current segments
    assert seg.StudyInstanceUID == pydicom.dcmread(next(iter(files.values()))).StudyInstanceUID  # under the CT's study
    assert {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(files)
    liver = seg.SegmentSequence[0]
    assert liver.SegmentAlgorithmType == "SEMIAUTOMATIC"  # edited after the cascade
    manifest = load_manifest()
    assert liver.SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters == ",".join(
        f"{stage}_model={model_id} sha256:{manifest[model_id].sha256[:12]}" for stage, model_id in MODELS.items())
    groups = {g["tracking_id"]: g for g in read_measurement_report(paths[1])}
    measured = measure_labelmap(labels)
    assert math.isclose(_volume(groups["Liver"]), measured.liver_volume_ml, rel_tol=1e-9)
    assert len([name for name in groups if name.startswith("Liver tumor lesion")]) == len(measured.lesions)
    assert "Future liver remnant" not in groups  # no resection planned


def test_unedited_result_then_a_planned_resection(ct_and_result, tmp_path):
    volume, segmentation, truth = ct_and_result
    paths = dicom_export.export_segmentation_to_dicom(segmentation, volume, tmp_path / "first")  # module's loader
    seg = pydicom.dcmread(paths[0])
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    decoded = read_segmentation(seg, scene_volumes.image_from_volume_node(volume),
                                label_for_segment=pipeline_label_map(seg))
    assert np.array_equal(sitk.GetArrayFromImage(decoded), sitk.GetArrayFromImage(truth))
    figures = scene_flr.compute_flr_in_scene(segmentation, volume, margin_mm=10.0, height_cm=170.0,
                                             weight_kg=70.0).result.figures
    paths = dicom_export.export_segmentation_to_dicom(segmentation, volume, tmp_path / "second")
    seg = pydicom.dcmread(paths[0])
    remnant = {g["tracking_id"]: g for g in read_measurement_report(paths[1])}["Future liver remnant"]
    assert remnant["segment"] == (seg.SOPInstanceUID, 1)
    assert _volume(remnant) == pytest.approx(figures.flr_ml, abs=0.05)  # as the FLR table shows it (0.1 mL)
    assert _volume(remnant, "Future liver remnant ratio") == pytest.approx(figures.flr_ratio, abs=5e-4)
    assert _volume(remnant, "Standardized future liver remnant") == pytest.approx(figures.sflr, abs=5e-4)


def test_a_volume_without_dicom_source_is_refused_clearly(mrml_scene, small_phantom, tmp_path):
    volume = scene_volumes.volume_node_from_image(small_phantom.ct, "CT from NRRD", scene=mrml_scene)
    segmentation = segmentations.labelmap_to_segmentation(small_phantom.labels, volume)
    with pytest.raises(ValueError, match=r"^volume 'CT from NRRD' has no DICOM source \(it was not loaded from "
                                         r"DICOM\), and a DICOM SEG must reference the CT's instances"):
        dicom_export.export_segmentation_to_dicom(segmentation, volume, tmp_path / "export")
    volume.SetAttribute(dicom_export.DICOM_UIDS_ATTRIBUTE, "1.2.3 1.2.4")
    with pytest.raises(ValueError, match=r"2 of its 2 DICOM instances have no file in the DICOM database "
                                         r"\(first: 1\.2\.3\)"):
        dicom_export.export_segmentation_to_dicom(segmentation, volume, tmp_path / "export",
                                                  file_for_instance=lambda uid: "")
    assert not (tmp_path / "export").exists()
