"""`livertumor demo` end to end on a small phantom: DICOM, scene, previews (and segmentation when demo models exist)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from LiverTumorSegLib import cli
from LiverTumorSegLib.cli.demo import DEMO_LIVER_MODEL, DEMO_TUMOR_MODEL
from LiverTumorSegLib.models.manifest import load_manifest


def test_demo_writes_the_series_truth_and_previews(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--size", "96", "--seed", "5", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(summary["out_dir"]) == (tmp_path / "demo").resolve()
    assert len(list(Path(summary["dicom_dir"]).glob("*.dcm"))) == summary["ct_size"][2]
    assert Path(summary["truth_labels"]).is_file()
    assert 1000 < summary["truth_liver_ml"] < 2000
    for window in ("abdomen", "liver_portal_venous", "model_input_thesis"):
        for plane in ("axial", "coronal", "sagittal"):
            image = Image.open(summary["previews"][f"{window}_{plane}"])
            assert image.size[0] > 64 and image.mode == "RGB"
    assert Path(summary["segmentation"]).is_file() and Path(summary["measurements_csv"]).is_file()
    assert "flr_axial" in summary["previews"]
    csv_text = Path(summary["measurements_csv"]).read_text()
    assert "future liver remnant" in csv_text and "Liver (total)" in csv_text
    models = load_manifest()
    if DEMO_LIVER_MODEL not in models:  # the truth is imported: the measured volumes are the truth's
        assert summary["segmentation_source"].startswith("phantom truth")
        assert abs(summary["liver_ml"] - summary["truth_liver_ml"]) < 0.1
        assert summary["liver_dice_vs_truth"] == 1.0
    elif DEMO_TUMOR_MODEL not in models:  # the demo liver model alone segments an unseen, coarser phantom
        assert summary["segmentation_source"].startswith("demo liver model")
        assert summary["liver_dice_vs_truth"] > 0.9, summary["liver_dice_vs_truth"]
        assert abs(summary["liver_ml"] - summary["truth_liver_ml"]) < 0.1 * summary["truth_liver_ml"]
        assert summary["tumor_ml"] == 0.0 and summary["lesions"] == 0
    else:  # the phantom-trained demo models segment an unseen, coarser phantom in the background worker
        assert summary["segmentation_source"].startswith("demo models")
        assert summary["liver_dice_vs_truth"] > 0.9, summary["liver_dice_vs_truth"]
        assert summary["tumor_dice_vs_truth"] > 0.5, summary["tumor_dice_vs_truth"]
        assert abs(summary["liver_ml"] - summary["truth_liver_ml"]) < 0.1 * summary["truth_liver_ml"]
        assert summary["lesions"] >= 1
