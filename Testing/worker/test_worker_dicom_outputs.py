"""A DICOM input also gives a DICOM SEG and SR (worker.dicom_outputs), through ``livertumor segment --dicom``, with the
demo models on a small oblique series (about 10 s)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_cases import small_series

from LiverTumorSegLib.io.dicom_seg import pipeline_label_map, read_segmentation
from LiverTumorSegLib.io.dicom_sr import read_measurement_report
from LiverTumorSegLib.models.manifest import load_manifest
from LiverTumorSegLib.worker.dicom_outputs import DICOM_OUTPUT_FILES
from LiverTumorSegLib.worker.job import SegmentationJob
from LiverTumorSegLib.worker.segmentation import run_job


def test_segment_dicom_writes_seg_and_report_of_the_cascade_labels(tmp_path):
    paths, _ = small_series(tmp_path / "ct", seed=3)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "LiverTumorSegLib.cli", "segment", "--dicom", str(tmp_path / "ct"),
                             "--out", str(out), "--device", "cpu", "--liver-model", "demo-liver-segresnet",
                             "--tumor-model", "demo-tumor-segresnet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["dicom_outputs"] == ["segmentation.dcm", "report.dcm"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["labels.nrrd", "results.json", "segmentation.seg.nrrd",
                                                            *DICOM_OUTPUT_FILES])
    labels = sitk.ReadImage(str(out / "labels.nrrd"))
    assert np.count_nonzero(sitk.GetArrayViewFromImage(labels) == 1) > 0  # the demo liver model finds the blob
    seg = pydicom.dcmread(out / "segmentation.dcm")
    decoded = read_segmentation(seg, labels, label_for_segment=pipeline_label_map(seg))
    assert np.array_equal(sitk.GetArrayFromImage(decoded), sitk.GetArrayFromImage(labels))
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence} == {s.SOPInstanceUID for s in sources}
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    manifest = load_manifest()
    assert algorithm.AlgorithmParameters == ",".join(
        f"{stage}_model={model_id} sha256:{manifest[model_id].sha256[:12]}"
        for stage, model_id in (("liver", "demo-liver-segresnet"), ("tumor", "demo-tumor-segresnet")))
    assert "DEMO models" in seg.SeriesDescription
    results = json.loads((out / "results.json").read_text())
    groups = {g["tracking_id"]: g for g in read_measurement_report(out / "report.dcm")}
    volume = next(m["value"] for m in groups["Liver"]["measurements"] if m["name"][2] == "Volume")
    assert volume == pytest.approx(results["liver_volume_ml"], rel=1e-9)
    assert len([name for name in groups if name.startswith("Liver tumor lesion")]) == len(results["lesions"])


def test_a_source_the_seg_cannot_reference_gives_the_other_outputs_and_says_why(tmp_path):
    paths, _ = small_series(tmp_path / "ct", seed=2)
    for path in paths:  # an anonymiser blanked the study UID
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = ""
        ds.save_as(path)
    job = SegmentationJob(liver_model="demo-liver-segresnet", tumor_model=None, dicom=str(tmp_path / "ct"),
                          output_dir=str(tmp_path / "out"), device="cpu")
    results = run_job(job, lambda record: None, threading.Event())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["labels.nrrd", "results.json",
                                                                     "segmentation.seg.nrrd"]
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["dicom_outputs"] == [] == results["dicom_outputs"]
    assert written["dicom_outputs_error"].startswith("no DICOM SEG/SR: IM0000.dcm: empty or missing StudyInstanceUID")


def test_the_worker_the_command_line_and_the_scene_bridge_import_without_highdicom_and_pynetdicom():
    """Slicer installs highdicom on the first Run: nothing imported before may need it (nor pynetdicom)."""
    code = ("import sys; sys.modules['highdicom'] = sys.modules['pynetdicom'] = None\n"
            "import LiverTumorSegLib.worker.segmentation, LiverTumorSegLib.cli\n"
            "from LiverTumorSegLib.testing import headless_slicer; headless_slicer.bootstrap()\n"
            "import LiverTumorSegLib.scene.dicom_export\n"
            "LiverTumorSegLib.cli.build_parser()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
