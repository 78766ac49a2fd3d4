"""TID 1500 measurement report: every value with its UCUM unit and the SEG segment it references, read back three
ways (our content-tree reader, highdicom's TID 1500 parser, dcmqi's tid1500reader)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import subprocess

import highdicom as hd
import pydicom
import pytest
import SimpleITK as sitk
from dicom_cases import dcmqi_tool

from LiverTumorSegLib.core.flr import compute_flr
from LiverTumorSegLib.core.measurements import measure_labelmap
from LiverTumorSegLib.io import dicom_io
from LiverTumorSegLib.io.dicom_seg import Algorithm, read_segment_masks, segment_volume_ml, write_segmentation
from LiverTumorSegLib.io.dicom_sr import (
    read_measurement_report,
    write_dicom_results,
    write_measurement_report,
)

ALGORITHM = Algorithm("pytest truth copy", "1.2.3", (("liver_model", "model-a v1"),))
VOLUME = ("118565006", "SCT", "Volume")
LONG_AXIS = ("103339001", "SCT", "Long axis")
COUNT = ("111406", "DCM", "Number of similar findings")
FLR_RATIO = ("FLRR", "99LTA", "Future liver remnant ratio")
SFLR = ("SFLR", "99LTA", "Standardized future liver remnant")


@pytest.fixture(scope="module")
def case(small_phantom_dicom):
    """Headers, truth labels, their SEG, their measurements and a real FLR (10 mm tumor margins, 170 cm, 70 kg)."""
    headers = dicom_io.series_headers(small_phantom_dicom["dicom"])
    truth = sitk.ReadImage(str(small_phantom_dicom["truth"]))
    seg = write_segmentation(truth, headers, ALGORITHM)
    flr = compute_flr(truth, margin_mm=10.0, height_cm=170.0, weight_kg=70.0).figures.to_dict()
    return headers, truth, seg, measure_labelmap(truth), flr


def _find(groups, tracking_id):
    matches = [g for g in groups if g["tracking_id"] == tracking_id]
    assert len(matches) == 1, f"{len(matches)} groups named {tracking_id!r}"
    return matches[0]


def _value(group, concept, unit):
    items = [m for m in group["measurements"] if m["name"] == concept]
    assert len(items) == 1, f"{group['tracking_id']}: {len(items)} items {concept}"
    assert items[0]["unit"] == unit, f"{group['tracking_id']} {concept[2]}: unit {items[0]['unit']} != {unit}"
    return items[0]["value"]


def test_report_values_units_and_references(case, tmp_path):
    headers, truth, seg, m, flr = case
    assert len(m.lesions) >= 3 and flr["sflr"] is not None  # lesions and the sFLR are really exercised
    write_measurement_report(m, seg, headers, ALGORITHM, flr=flr).save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    groups = read_measurement_report(tmp_path / "sr.dcm")
    seg_uid = seg.SOPInstanceUID
    liver = _find(groups, "Liver")
    assert liver["segment"] == (seg_uid, 1) and liver["finding"] == ("10200004", "SCT", "Liver")
    assert math.isclose(_value(liver, VOLUME, "ml"), m.liver_volume_ml, rel_tol=1e-9)
    tumor = _find(groups, "Liver tumor")
    assert tumor["segment"] == (seg_uid, 2) and tumor["finding"] == ("108369006", "SCT", "Neoplasm")
    assert math.isclose(_value(tumor, VOLUME, "ml"), m.tumor_volume_ml, rel_tol=1e-9)
    assert _value(tumor, COUNT, "{lesions}") == len(m.lesions)
    for lesion in m.lesions:
        group = _find(groups, f"Liver tumor lesion {lesion.id}")
        assert group["segment"] == (seg_uid, 2)
        assert math.isclose(_value(group, VOLUME, "ml"), lesion.volume_ml, rel_tol=1e-9)
        assert math.isclose(_value(group, LONG_AXIS, "mm"), lesion.longest_axial_diameter_mm, rel_tol=1e-9)
    remnant = _find(groups, "Future liver remnant")
    assert remnant["segment"] == (seg_uid, 1)
    assert math.isclose(_value(remnant, VOLUME, "ml"), flr["flr_ml"], rel_tol=1e-9)
    assert math.isclose(_value(remnant, FLR_RATIO, "1"), flr["flr_ratio"], rel_tol=1e-9)
    assert math.isclose(_value(remnant, SFLR, "1"), flr["sflr"], rel_tol=1e-9)
    assert len(groups) == 3 + len(m.lesions)
    read = pydicom.dcmread(tmp_path / "sr.dcm")  # same patient and study; evidence = the SEG and every CT slice
    assert read.StudyInstanceUID == headers[0].StudyInstanceUID and read.PatientID == headers[0].PatientID
    evidence = {item.ReferencedSOPInstanceUID for study in read.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert evidence == {seg_uid, *(ds.SOPInstanceUID for ds in headers)}
    assert any(item.CodingSchemeDesignator == "99LTA" for item in read.CodingSchemeIdentificationSequence)
    assert read.CompletionFlag == "COMPLETE" and read.Modality == "SR"


def test_reported_liver_volume_is_the_referenced_segments_volume(case):
    """The whole-liver segment: Segment Statistics on the SEG's Liver segment reproduce the report."""
    headers, truth, seg, m, _ = case
    masks, grid = read_segment_masks(seg, truth)
    liver = _find(read_measurement_report(write_measurement_report(m, seg, headers, ALGORITHM)), "Liver")
    assert math.isclose(_value(liver, VOLUME, "ml"), segment_volume_ml(masks[1], grid), rel_tol=1e-9)


def test_report_parses_with_highdicom(case, tmp_path):
    headers, truth, seg, m, flr = case
    write_measurement_report(m, seg, headers, ALGORITHM, flr=flr).save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    report = hd.sr.srread(tmp_path / "sr.dcm").content
    assert len(report.get_volumetric_roi_measurement_groups()) == 3 + len(m.lesions)
    (liver,) = report.get_volumetric_roi_measurement_groups(finding_type=hd.sr.CodedConcept("10200004", "SCT", "Liver"))
    (volume,) = liver.get_measurements(name=hd.sr.CodedConcept(*VOLUME))
    assert volume.value == pytest.approx(m.liver_volume_ml) and volume.unit.value == "ml"
    assert liver.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert liver.referenced_segment.referenced_segment_numbers == [1]


def test_report_reads_with_dcmqi(case, tmp_path):
    headers, truth, seg, m, flr = case
    write_measurement_report(m, seg, headers, ALGORITHM, flr=flr).save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    result = subprocess.run([str(dcmqi_tool("tid1500reader")), "--inputDICOM", str(tmp_path / "sr.dcm"),
                             "--outputMetadata", str(tmp_path / "sr.json")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    by_id = {group["TrackingIdentifier"]: group for group in json.loads((tmp_path / "sr.json").read_text())["Measurements"]}
    assert set(by_id) == {"Liver", "Liver tumor", "Future liver remnant",
                          *(f"Liver tumor lesion {lesion.id}" for lesion in m.lesions)}
    liver = by_id["Liver"]
    assert liver["ReferencedSegment"] == 1 and liver["segmentationSOPInstanceUID"] == seg.SOPInstanceUID
    (item,) = liver["measurementItems"]
    assert item["units"]["CodeValue"] == "ml" and float(item["value"]) == pytest.approx(m.liver_volume_ml)
    first = by_id["Liver tumor lesion 1"]
    values = {i["quantity"]["CodeMeaning"]: (float(i["value"]), i["units"]["CodeValue"]) for i in first["measurementItems"]}
    assert first["ReferencedSegment"] == 2
    assert values["Long axis"] == (pytest.approx(m.lesions[0].longest_axial_diameter_mm), "mm")
    assert first["measurementAlgorithmIdentification"]["AlgorithmName"] == "pytest truth copy"


def test_no_tumor_and_no_flr(case):
    headers, truth, _, _, _ = case
    liver_only = sitk.Cast(truth > 0, sitk.sitkUInt8)
    seg = write_segmentation(liver_only, headers, ALGORITHM)
    m = measure_labelmap(liver_only)
    assert m.tumor_volume_ml == 0 and m.lesions == []
    groups = read_measurement_report(write_measurement_report(m, seg, headers, ALGORITHM))
    assert [g["tracking_id"] for g in groups] == ["Liver", "Liver tumor"]
    assert groups[1]["segment"] == (seg.SOPInstanceUID, 2)  # the empty tumor segment is still referenced
    assert _value(groups[1], VOLUME, "ml") == 0.0 and _value(groups[1], COUNT, "{lesions}") == 0.0


def test_flr_without_sflr(case):
    headers, truth, seg, m, flr = case
    without = dict(flr, sflr=None)
    remnant = _find(read_measurement_report(write_measurement_report(m, seg, headers, ALGORITHM, flr=without)),
                    "Future liver remnant")
    assert [item["name"][0] for item in remnant["measurements"]] == ["118565006", "FLRR"]


@pytest.mark.parametrize("change,message", [
    (lambda m: dataclasses.replace(m, tumor_volume_ml=float("nan")), "measurement tumor_volume_ml must be finite"),
    (lambda m: dataclasses.replace(m, lesions=[dataclasses.replace(m.lesions[0], volume_ml=-1.0)]),
     "measurement lesion 1 volume_ml must be finite and >= 0, got -1.0"),
])
def test_bad_measurements_are_refused(case, change, message):
    headers, truth, seg, m, _ = case
    with pytest.raises(ValueError, match=message):
        write_measurement_report(change(m), seg, headers, ALGORITHM)


def test_bad_flr_figures_are_refused(case):
    headers, truth, seg, m, _ = case
    with pytest.raises(ValueError, match=r"FLR figures lack \['flr_ratio'\]"):
        write_measurement_report(m, seg, headers, ALGORITHM, flr={"flr_ml": 1.0})


def test_seg_without_liver_segment_is_refused(case):
    headers, truth, seg, m, _ = case
    other = copy.deepcopy(seg)
    other.SegmentSequence = pydicom.Sequence([seg.SegmentSequence[1]])  # the tumor only
    with pytest.raises(ValueError, match="has no Liver segment"):
        write_measurement_report(m, other, headers, ALGORITHM)


def test_write_dicom_results_writes_both_files_and_only_them(case, tmp_path):
    headers, truth, _, m, flr = case
    seg_path, report_path = write_dicom_results(tmp_path, truth, headers, ALGORITHM, flr=flr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.dcm", "segmentation.dcm"]
    seg, report = pydicom.dcmread(seg_path), pydicom.dcmread(report_path)
    groups = read_measurement_report(report)
    assert {g["segment"][0] for g in groups} == {seg.SOPInstanceUID}
    assert math.isclose(_value(_find(groups, "Liver"), VOLUME, "ml"), m.liver_volume_ml, rel_tol=1e-9)
    only_seg = write_dicom_results(tmp_path / "seg_only", truth, headers, ALGORITHM, report_name=None)
    assert [p.name for p in only_seg] == ["segmentation.dcm"]
