"""Evaluation metrics on labelmaps with hand-computed answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib import cli
from LiverTumorSegLib.training import evaluation


def labelmap(array_zyx: np.ndarray, spacing=(0.8, 0.8, 2.5)) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin((-100.0, -50.0, 20.0))
    return image


def by_structure(metrics):
    return {m.structure: m for m in metrics}


def test_box_overlap_gives_hand_computed_dsc_precision_recall():
    truth = np.zeros((10, 20, 20), np.uint8)
    truth[2:8, 5:15, 5:15] = 1          # 600 liver voxels
    truth[4:6, 8:12, 8:12] = 2          # 32 tumor voxels inside
    pred = np.zeros_like(truth)
    pred[2:8, 5:15, 5:10] = 1           # half of the liver: 300 voxels (tumor half included)
    pred[4:6, 8:12, 8:10] = 2           # half of the tumor: 16 voxels
    metrics = by_structure(evaluation.case_metrics(labelmap(pred), labelmap(truth), "box"))
    liver, tumor = metrics["liver"], metrics["tumor"]
    assert (liver.truth_voxels, liver.predicted_voxels, liver.intersection_voxels) == (600, 300, 300)
    assert liver.dsc == pytest.approx(2 * 300 / (600 + 300))
    assert liver.precision == pytest.approx(1.0) and liver.recall == pytest.approx(0.5)
    assert tumor.dsc == pytest.approx(2 * 16 / 48)
    assert liver.truth_ml == pytest.approx(600 * 0.8 * 0.8 * 2.5 / 1000)


def test_identical_masks_have_zero_surface_distance():
    truth = np.zeros((12, 24, 24), np.uint8)
    truth[3:9, 4:20, 6:18] = 1
    metrics = by_structure(evaluation.case_metrics(labelmap(truth), labelmap(truth), "same"))
    assert metrics["liver"].dsc == 1.0
    assert metrics["liver"].hd95_mm == pytest.approx(0.0) and metrics["liver"].assd_mm == pytest.approx(0.0)
    assert metrics["tumor"].dsc == 1.0  # both empty


def test_surface_distances_are_in_millimetres():
    """A slab grown by 3 voxels along x (spacing 2 mm) only: every changed surface point is 6 mm away."""
    truth = np.zeros((20, 20, 30), np.uint8)
    truth[5:15, 5:15, 5:15] = 1
    pred = np.zeros_like(truth)
    pred[5:15, 5:15, 5:18] = 1
    metrics = by_structure(evaluation.case_metrics(labelmap(pred, (2.0, 1.0, 1.0)), labelmap(truth, (2.0, 1.0, 1.0)), "x"))
    assert metrics["liver"].hd95_mm == pytest.approx(6.0, abs=0.01)
    assert 0.0 < metrics["liver"].assd_mm < 6.0


def test_one_empty_structure_gives_zero_dsc_and_undefined_distances():
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    truth[3, 3, 3] = 2
    pred = truth.copy()
    pred[pred == 2] = 1
    metrics = evaluation.case_metrics(labelmap(pred), labelmap(truth), "missed tumor")
    tumor = by_structure(metrics)["tumor"]
    assert tumor.dsc == 0.0 and math.isnan(tumor.hd95_mm) and tumor.recall == 0.0
    summary = evaluation.summarize(metrics)
    assert summary["tumor"]["n_undefined_distance"] == 1


def test_global_dsc_pools_voxels_over_cases():
    truth_a = np.zeros((4, 10, 10), np.uint8)
    truth_a[:, :, :] = 1                     # 400 voxels, predicted perfectly
    truth_b = np.zeros((4, 10, 10), np.uint8)
    truth_b[0, 0, :2] = 1                    # 2 voxels, missed
    metrics = (evaluation.case_metrics(labelmap(truth_a), labelmap(truth_a), "a")
               + evaluation.case_metrics(labelmap(np.zeros_like(truth_b)), labelmap(truth_b), "b"))
    liver = evaluation.summarize(metrics)["liver"]
    assert liver["dsc_mean"] == pytest.approx(0.5)
    assert liver["dsc_global"] == pytest.approx(2 * 400 / (800 + 2))
    assert liver["dsc_histogram_percent"] == {"0-20": 1, "20-40": 0, "40-60": 0, "60-80": 0, "80-100": 1}


def test_histogram_bin_edges():
    assert evaluation.dsc_histogram([0.0, 0.1999, 0.2, 0.7999, 0.8, 1.0]) == {
        "0-20": 2, "20-40": 1, "40-60": 0, "60-80": 1, "80-100": 2}


def test_grid_mismatch_names_the_case():
    a = labelmap(np.zeros((4, 4, 4), np.uint8))
    b = labelmap(np.zeros((4, 4, 4), np.uint8), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="case7.*same voxel grid"):
        evaluation.case_metrics(a, b, "case7")


def test_evaluate_cli_writes_csv_markdown_and_json(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    truth = np.zeros((6, 12, 12), np.uint8)
    truth[1:5, 2:10, 2:10] = 1
    truth[2:4, 4:7, 4:7] = 2
    for name in ("case1.nrrd", "case2.nrrd"):
        sitk.WriteImage(labelmap(truth), str(tmp_path / "truth" / name))
        sitk.WriteImage(labelmap(truth), str(tmp_path / "pred" / name))
    assert cli.main(["evaluate", "--predicted", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"),
                     "--out", str(tmp_path / "report")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["summary"]["tumor"]["dsc_global"] == pytest.approx(1.0)
    rows = (tmp_path / "report" / "per_case.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2
    assert "| liver | 2 | 1.000" in (tmp_path / "report" / "summary.md").read_text()


def test_missing_prediction_is_named(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    sitk.WriteImage(labelmap(np.zeros((2, 2, 2), np.uint8)), str(tmp_path / "truth" / "c9.nrrd"))
    with pytest.raises(FileNotFoundError, match="c9.nrrd"):
        evaluation.evaluate_folders(tmp_path / "pred", tmp_path / "truth")
