"""``livertumor export-seg``: SEG (and SR, with the FLR) of a corrected labelmap on the CT's grid; bad input refused
with one line before anything is written."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from LiverTumorSegLib import cli
from LiverTumorSegLib.core.flr import compute_flr
from LiverTumorSegLib.core.measurements import connected_components, measure_labelmap
from LiverTumorSegLib.io import dicom_io
from LiverTumorSegLib.io.dicom_seg import pipeline_label_map, read_segmentation
from LiverTumorSegLib.io.dicom_sr import read_measurement_report


@pytest.fixture(scope="module")
def corrected(small_phantom_dicom, tmp_path_factory):
    """The phantom's truth with its smallest lesion painted back to liver (a reader's correction), as NRRD."""
    truth = sitk.ReadImage(str(small_phantom_dicom["truth"]))
    lesions = sitk.GetArrayFromImage(connected_components(truth == 2))
    array = sitk.GetArrayFromImage(truth)
    array[lesions == lesions.max()] = 1
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(truth)
    path = tmp_path_factory.mktemp("corrected") / "corrected.nrrd"
    sitk.WriteImage(labels, str(path))
    return path, labels, int(lesions.max())


def test_export_seg_and_report_of_a_corrected_labelmap(small_phantom_dicom, corrected, tmp_path):
    path, labels, lesions_before = corrected
    flr = compute_flr(labels, margin_mm=10.0).figures.to_dict()
    (tmp_path / "flr.json").write_text(json.dumps(flr))
    (tmp_path / "results.json").write_text(json.dumps({"models": {"liver": {"id": "demo-liver", "sha256": "ab" * 32,
                                                                            "demo_only": True}, "tumor": None}}))
    result = subprocess.run([sys.executable, "-m", "LiverTumorSegLib.cli", "export-seg", "--labels", str(path),
                             "--dicom", str(small_phantom_dicom["dicom"]), "--out", str(tmp_path / "seg.dcm"),
                             "--report", str(tmp_path / "report.dcm"), "--flr", str(tmp_path / "flr.json"),
                             "--results", str(tmp_path / "results.json")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    measured = measure_labelmap(labels)
    assert summary["lesions"] == len(measured.lesions) == lesions_before - 1 and summary["algorithm_type"] == "SEMIAUTOMATIC"
    ct = dicom_io.load_series(small_phantom_dicom["dicom"])
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    decoded = read_segmentation(seg, ct, label_for_segment=pipeline_label_map(seg))
    assert np.array_equal(sitk.GetArrayFromImage(decoded), sitk.GetArrayFromImage(labels))  # voxel for voxel
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters == (
        "liver_model=demo-liver sha256:" + "ab" * 6)
    groups = {g["tracking_id"]: g for g in read_measurement_report(tmp_path / "report.dcm")}
    assert {g["segment"][0] for g in groups.values()} == {seg.SOPInstanceUID}
    assert groups["Future liver remnant"]["measurements"][0]["value"] == pytest.approx(flr["flr_ml"])
    assert groups["Liver"]["measurements"][0]["value"] == pytest.approx(measured.liver_volume_ml)
    assert len([name for name in groups if name.startswith("Liver tumor lesion")]) == len(measured.lesions)


def _run(capsys, *args) -> tuple[int, str]:
    code = cli.main(["export-seg", *map(str, args)])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("change, message", [
    ("shifted", r"--labels \S+ is not on the grid of the CT series [0-9.]+ in \S+: origin"),
    ("value_7", r"--labels \S+: values \[7\] are not 0 \(background\), 1 \(liver\) or 2 \(tumor\)"),
    ("float", r"--labels \S+: expected a 3D integer labelmap, got 3D 32-bit float"),
])
def test_bad_labelmaps_are_refused_with_one_line(small_phantom_dicom, corrected, tmp_path, capsys, change, message):
    labels = sitk.Image(corrected[1])
    if change == "shifted":
        labels.SetOrigin(tuple(o + 1.0 for o in labels.GetOrigin()))
    elif change == "value_7":
        labels[3, 3, 3] = 7
    else:
        labels = sitk.Cast(labels, sitk.sitkFloat32)
    sitk.WriteImage(labels, str(tmp_path / "labels.nrrd"))
    code, err = _run(capsys, "--labels", tmp_path / "labels.nrrd", "--dicom", small_phantom_dicom["dicom"],
                     "--out", tmp_path / "seg.dcm", "--report", tmp_path / "report.dcm")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("livertumor export-seg: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "seg.dcm").exists() and not (tmp_path / "report.dcm").exists()


def test_existing_output_flr_without_report_and_missing_series_are_refused(small_phantom_dicom, corrected, tmp_path,
                                                                            capsys):
    (tmp_path / "seg.dcm").write_text("the user's file")
    base = ["--labels", corrected[0], "--dicom", small_phantom_dicom["dicom"]]
    code, err = _run(capsys, *base, "--out", tmp_path / "seg.dcm")
    assert code == 2 and err.endswith("seg.dcm exists; pass --overwrite to replace it")
    assert (tmp_path / "seg.dcm").read_text() == "the user's file"
    code, err = _run(capsys, *base, "--out", tmp_path / "new.dcm", "--flr", tmp_path / "flr.json")
    assert code == 2 and err.endswith("--flr goes into the report: give --report too")
    code, err = _run(capsys, *base, "--series", "1.2.3", "--out", tmp_path / "new.dcm")
    assert code == 2 and "series 1.2.3 not found in" in err and not (tmp_path / "new.dcm").exists()
    code, err = _run(capsys, *base, "--out", tmp_path / "seg.dcm", "--overwrite")
    assert code == 0 and pydicom.dcmread(tmp_path / "seg.dcm").Modality == "SEG"
