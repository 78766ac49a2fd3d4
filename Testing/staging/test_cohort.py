"""Cohort input: folder layouts (nested, flat, DICOM), CSV/Excel tables, date matching with every exclusion
reason, the feature table, and `tnmstaging features`."""

from __future__ import annotations

import csv
import json
import warnings
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from TNMStagingLib.cli import main
from TNMStagingLib.training import cohort


def _images(seed: int = 0, tumor: bool = True) -> tuple[sitk.Image, sitk.Image]:
    labels = np.zeros((4, 16, 16), np.uint8)
    labels[1:3, 2:14, 2:14] = 1
    if tumor:
        labels[1:3, 4 : 4 + 3 + seed % 5, 4:8] = 2
    ct = np.full(labels.shape, -500.0, np.float32)
    ct[labels > 0] = 60.0 + 30.0 * (labels[labels > 0] == 2)
    label_image = sitk.GetImageFromArray(labels)
    label_image.SetSpacing((1.5, 1.5, 4.0))
    ct_image = sitk.GetImageFromArray(ct)
    ct_image.CopyInformation(label_image)
    return ct_image, label_image


def _write_case(
    folder: Path, ct_name: str | None = "ct.nii.gz", labels_name: str | None = "labels.nii.gz", seed=0
):
    folder.mkdir(parents=True, exist_ok=True)
    ct, labels = _images(seed)
    if ct_name:
        sitk.WriteImage(ct, str(folder / ct_name))
    if labels_name:
        sitk.WriteImage(labels, str(folder / labels_name))


def _write_dicom_series(folder: Path, study_date: str) -> None:
    folder.mkdir(parents=True)
    ct, _ = _images()
    image = sitk.Cast(ct, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        section = image[:, :, k]
        tags = {
            "0008|0020": study_date,
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "1.5\\1.5",
            "0018|0050": "4.0",
        }
        for key, value in tags.items():
            section.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(section)


@pytest.fixture
def cohort_dir(tmp_path) -> Path:
    root = tmp_path / "cohort"
    _write_case(root / "P01" / "20230105_portal")  # nested, matched exactly
    _write_case(root / "P01" / "2023-06-01")  # second scan of P01: date mismatch
    _write_case(root / "P02" / "20230201", labels_name=None)  # no labelmap
    _write_case(root / "P04" / "baseline")  # no date in the name, not DICOM
    (root / "P07" / "empty").mkdir(parents=True)  # no CT at all
    _write_dicom_series(root / "P05" / "series1" / "dicom", "20230420")
    _write_case(root / "P05" / "series1", ct_name=None)
    _write_case(root / "P09" / "20230909")  # no table row
    _write_case(root, ct_name="P03_20230310.nii.gz", labels_name=None)  # flat, 2 days off the table
    _write_case(root / "labels", ct_name=None, labels_name="P03_20230310.nii.gz")
    _write_case(root, ct_name="notes.nii.gz", labels_name=None)
    return root


TABLE = [
    ["Patient ID", "Scan_Date", "Stage"],
    ["p01", "2023-01-05", "II"],
    ["P01", "2023-05-01", "IIIA"],
    ["P03", "20230312", "IIIA"],
    ["P04", "2023-01-01", "IA"],
    ["P05", "20.04.2023", "ib"],
    ["P06", "2023-01-01", "IA"],
    ["P08", "soon", "IA"],
    ["", "", ""],
]


def _csv(path: Path, rows, delimiter=",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream, delimiter=delimiter).writerows(rows)
    return path


def test_parsing_helpers():
    assert cohort.parse_date("2023-01-05") == cohort.parse_date("20230105") == cohort.parse_date("05.01.2023")
    assert cohort.parse_date(datetime(2023, 1, 5, 10, 30)) == date(2023, 1, 5)
    with pytest.raises(ValueError, match="soon"):
        cohort.parse_date("soon")
    assert cohort.date_in_name("2023-06-01_arterial") == date(2023, 6, 1)
    assert cohort.date_in_name("P3_20231399_x_20230102") == date(2023, 1, 2)  # 13th month skipped
    assert cohort.date_in_name("baseline") is None
    assert cohort.normalize_patient_id(123.0) == cohort.normalize_patient_id(" 123 ") == "123"
    assert cohort.normalize_patient_id("AbC") == "abc"


def test_read_table_csv_skips_bad_rows_with_a_warning(tmp_path):
    with pytest.warns(cohort.CohortTableWarning, match="row 8 skipped"):
        rows = cohort.read_table(_csv(tmp_path / "t.csv", TABLE, delimiter=";"))
    assert [(r.patient_id, r.stage, r.row_number) for r in rows][:2] == [("p01", "II", 2), ("p01", "IIIA", 3)]
    assert rows[4].scan_date == date(2023, 4, 20) and rows[4].stage == "IB"
    _csv(tmp_path / "bad.csv", [["patient", "when", "stage"], ["P1", "2023-01-01", "I"]])
    with pytest.raises(ValueError, match="no scan date column"):
        cohort.read_table(tmp_path / "bad.csv")


def test_read_table_excel(tmp_path):
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["pid", "date", "AJCC stage"])
    sheet.append([101, datetime(2022, 3, 4), "IVA"])
    sheet.append(["102", "2022-03-05", 2])
    workbook.save(tmp_path / "t.xlsx")
    rows = cohort.read_table(tmp_path / "t.xlsx")
    assert [(r.patient_id, r.scan_date, r.stage) for r in rows] == [
        ("101", date(2022, 3, 4), "IVA"),
        ("102", date(2022, 3, 5), "2"),
    ]


def test_load_cohort_matches_by_patient_and_date_and_lists_every_exclusion(cohort_dir, tmp_path):
    table = _csv(tmp_path / "t.csv", TABLE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cohort.CohortTableWarning)
        found = cohort.load_cohort(cohort_dir, table)
        tolerant = cohort.load_cohort(cohort_dir, table, tolerance_days=2)
    matched = {(c.scan.patient_id, c.scan.name): c.stage for c in found.cases}
    assert matched == {("P01", "20230105_portal"): "II", ("P05", "series1"): "IB"}
    dicom_case = next(c for c in found.cases if c.scan.patient_id == "P05")
    assert dicom_case.scan.scan_date == date(2023, 4, 20) and dicom_case.scan.image.name == "dicom"
    reasons = {(e.patient_id, e.scan): e.reason for e in found.excluded}
    assert reasons[("P01", "2023-06-01")].startswith(
        "date mismatch: nearest table date 2023-05-01 is 31 days"
    )
    assert reasons[("P02", "20230201")].startswith("no labelmap")
    assert reasons[("P04", "baseline")].startswith("no scan date")
    assert reasons[("P07", "empty")].startswith("no CT")
    assert reasons[("P09", "20230909")] == "no table row for this patient"
    assert reasons[("P03", "P03_20230310")].startswith("date mismatch")
    assert "is not <patient>_<YYYYMMDD>" in reasons[("", "notes.nii.gz")]
    assert len(found.cases) + len(found.excluded) == 9
    flat = next(c for c in tolerant.cases if c.scan.patient_id == "P03")
    assert (flat.stage, flat.days_apart, flat.scan.labels.parent.name) == ("IIIA", 2, "labels")
    out = cohort.write_exclusions(found.excluded, tmp_path / "excluded.csv")
    with open(out, newline="") as stream:
        written = list(csv.DictReader(stream))
    assert len(written) == len(found.excluded) and set(written[0]) == {"patient_id", "scan", "path", "reason"}


def test_equally_near_rows_with_different_stages_are_ambiguous():
    scan = cohort.Scan("P1", "s", date(2023, 1, 10), Path("ct.nii.gz"), Path("labels.nii.gz"))
    rows = [
        cohort.TableRow("p1", date(2023, 1, 9), "I", 2),
        cohort.TableRow("p1", date(2023, 1, 11), "II", 3),
    ]
    result = cohort.match_scans([scan], rows, tolerance_days=1)
    assert not result.cases and result.excluded[0].reason.startswith("ambiguous")
    same_stage = cohort.match_scans([scan], [rows[0], rows[1].__class__("p1", date(2023, 1, 11), "I", 3)], 1)
    assert same_stage.cases[0].stage == "I"


def test_read_scan_reads_dicom_series_and_files(cohort_dir):
    dicom = cohort.read_image(cohort_dir / "P05" / "series1" / "dicom")
    assert dicom.GetSize() == (16, 16, 4) and dicom.GetSpacing() == pytest.approx((1.5, 1.5, 4.0))
    scans, _ = cohort.find_scans(cohort_dir)
    ct, labels = cohort.read_scan(next(s for s in scans if s.name == "20230105_portal"))
    assert ct.GetPixelID() == sitk.sitkFloat32 and labels.GetPixelID() == sitk.sitkUInt8
    with pytest.raises(ValueError, match="cannot read"):
        cohort.read_image(cohort_dir / "P07" / "empty")


def test_feature_table_round_trip_and_checks(tmp_path):
    base = {
        "patient_id": "P1",
        "scan": "s",
        "scan_date": "2023-01-01",
        "stage": "II",
        "encoder": "vit_b",
        "weights": "random-init",
        "encoder_seed": 0,
        "input_mode": "sam",
        "n_slices": 3,
        "feature_config": json.dumps({"max_slices": 3}),
    }
    records = [base | {"a": 1.5, "b": float("nan")}, base | {"patient_id": "P2", "a": -2.0, "b": 1e-20}]
    path = cohort.write_feature_table(tmp_path / "f.csv", records, ["a", "b"])
    table = cohort.read_feature_table(path)
    assert (
        table.feature_names == ["a", "b"]
        and table.patient_ids == ["P1", "P2"]
        and table.stages == ["II", "II"]
    )
    assert table.X[0, 0] == 1.5 and np.isnan(table.X[0, 1]) and table.X[1, 1] == 1e-20
    assert table.encoder == {"name": "vit_b", "input_mode": "sam", "weights": "random-init", "seed": 0}
    assert table.feature_config == {"max_slices": 3}
    mixed = [records[0], records[1] | {"weights": "sha256:" + "0" * 64}]
    with pytest.raises(ValueError, match="mixes rows"):
        cohort.read_feature_table(cohort.write_feature_table(tmp_path / "m.csv", mixed, ["a", "b"]))
    with pytest.raises(ValueError, match="not a feature table"):
        cohort.read_feature_table(_csv(tmp_path / "x.csv", TABLE))


def test_cli_features_writes_table_and_exclusions(cohort_dir, tmp_path, capsys, monkeypatch):
    table = _csv(tmp_path / "t.csv", TABLE[:6])
    (cohort_dir / "P01" / "20230105_portal" / "labels.nii.gz").write_bytes(b"garbage")  # unreadable
    _write_case(cohort_dir / "P04" / "20230101", seed=3)  # P04 now has a dated scan
    out = tmp_path / "features.csv"
    argv = ["features", "--cohort", str(cohort_dir), "--table", str(table), "--out", str(out)]
    assert main(argv + ["--measured-only", "--tolerance-days", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cases"] == 3 and summary["encoder"] == "none"
    features_table = cohort.read_feature_table(out)
    assert sorted(features_table.patient_ids) == ["P03", "P04", "P05"]
    assert features_table.X[:, features_table.feature_names.index("tumor_count")].tolist() == [1.0, 1.0, 1.0]
    with open(summary["excluded_csv"], newline="") as stream:
        excluded = {row["scan"]: row["reason"] for row in csv.DictReader(stream)}
    assert (
        excluded["20230105_portal"].startswith("cannot read")
        and "Unable to determine ImageIO reader" in excluded["20230105_portal"]
    )
    assert summary["excluded"] == len(excluded) == 7

    monkeypatch.setenv("LIVERTUMOR_MODEL_DIR", str(tmp_path / "empty_cache"))
    assert main(argv) == 2  # image features need the SAM checkpoint: not here, and never downloaded
    error = capsys.readouterr().err
    assert "sam_vit_b_01ec64.pth" in error and "--random-init" in error


def test_phantom_stage_follows_ajcc_with_vessel_contact_as_suspected_invasion():
    from types import SimpleNamespace as Tumor

    from TNMStagingLib.training.demo_cohort import phantom_stage

    assert phantom_stage([Tumor(diameter_mm=18.0, touches_vessel=True)]) == ("IA", "T1a")
    assert phantom_stage([Tumor(diameter_mm=35.0, touches_vessel=False)]) == ("IB", "T1b")
    assert phantom_stage([Tumor(diameter_mm=35.0, touches_vessel=True)]) == ("II", "T2")
    assert phantom_stage([Tumor(diameter_mm=30.0, touches_vessel=False)] * 2) == ("II", "T2")
    assert phantom_stage(
        [Tumor(diameter_mm=52.0, touches_vessel=False), Tumor(diameter_mm=9.0, touches_vessel=True)]
    ) == ("IIIA", "T3")


def test_demo_cohort_is_a_loadable_cohort_staged_by_the_rules(tmp_path, capsys):
    from TNMStagingLib.core import ajcc

    out = tmp_path / "demo"
    assert (
        main(["demo-cohort", "--out", str(out), "--per-stage", "1", "--max-seeds", "3", "--size-xy", "48"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    with open(out / "stages.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert 1 <= len(rows) == sum(summary["stages"].values())
    for row in rows:
        diameters = [float(d) for d in row["diameters_mm"].split()]
        vascular = "suspected" if row["touches_vessel"] == "true" else "none"
        assert ajcc.stage(diameters, vascular_invasion=vascular).stage == row["stage"]
    found = cohort.load_cohort(out, out / "stages.csv")
    assert not found.excluded and sorted(c.stage for c in found.cases) == sorted(r["stage"] for r in rows)
