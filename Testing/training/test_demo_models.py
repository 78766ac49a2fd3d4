"""`livertumor demo-models`' held-out evaluation and model-card tables (untrained networks: process only)."""

from __future__ import annotations

import hashlib

import pytest

from LiverTumorSegLib.models.manifest import load_manifest
from LiverTumorSegLib.testing.phantom_scenarios import untrained_test_models
from LiverTumorSegLib.training import demo_models


def test_held_out_evaluation_counts_only_phantoms_with_tumors_and_reports_the_tumor_free_ones(tmp_path):
    models = load_manifest(untrained_test_models(tmp_path, spacing_mm=6.0))  # a coarse grid keeps it fast
    # at 64x64 in-plane, phantom 5001 is drawn without tumors; 5000 and 5002 have some
    evaluated = demo_models.evaluate_held_out(models["untrained-liver"], models["untrained-tumor"], tmp_path / "eval",
                                              5000, 2, 64, log=lambda _: None)
    assert evaluated["seeds"] == [5000, 5002]
    assert [case["seed"] for case in evaluated["tumor_free"]] == [5001]
    assert evaluated["tumor_free"][0]["false_positive_tumor_ml"] >= 0.0
    assert len(evaluated["seconds_per_case"]) == 3
    assert evaluated["summary"]["tumor"]["cases"] == 2
    assert sorted(p.name for p in (tmp_path / "eval" / "truth").iterdir()) == ["phantom_5000.nrrd",
                                                                                "phantom_5002.nrrd"]

    assert [c["seed"] for c in evaluated["tumor_reach"]] == [5000, 5002]
    assert all(0.0 <= c["fraction"] <= 1.0 and c["max_dsc"] <= 1.0 for c in evaluated["tumor_reach"])
    text = demo_models.held_out_description(evaluated, 64)
    assert "seeds 5000, 5002" in text and "seed 5001:" in text and "5002: " in text
    table = demo_models.per_case_table(evaluated["per_case"]).splitlines()
    assert len(table) == 2 + 2 and table[2].startswith("| phantom_5000.nrrd |")
    liver_dsc = float(table[2].split("|")[2])
    case = next(m for m in evaluated["per_case"] if m["case"] == "phantom_5000.nrrd" and m["structure"] == "liver")
    assert abs(liver_dsc - case["dsc"]) < 1e-3


def test_a_liver_only_evaluation_reports_the_liver_alone(tmp_path):
    models = load_manifest(untrained_test_models(tmp_path, spacing_mm=6.0))
    evaluated = demo_models.evaluate_held_out(models["untrained-liver"], None, tmp_path / "eval", 5000, 1, 64,
                                              log=lambda _: None)
    assert evaluated["seeds"] == [5000] and not evaluated["tumor_evaluated"]
    assert "| liver |" in evaluated["markdown"] and "| tumor |" not in evaluated["markdown"]
    header = demo_models.per_case_table(evaluated["per_case"], ("liver",)).splitlines()[0]
    assert "liver DSC" in header and "tumor" not in header
    case = evaluated["per_case"][0]
    assert case["structure"] == "liver" and case["truth_ml"] > 0


def test_the_manifest_is_rewritten_compactly_and_losslessly():
    import json

    document = {"models": [{"id": "x", "spacing_mm": [3.0, 3.0, 3.0], "note": "a [bracket], and a comma",
                            "names": ["a]", "[b", "c,\n"], "empty": {}, "none": [],
                            "args": {"blocks_down": [1, 2, 2, 4], "nested": [{"k": [1]}]}}]}
    text = demo_models.compact_json(document)
    assert json.loads(text) == document
    assert '"spacing_mm": [3.0, 3.0, 3.0]' in text and '"blocks_down": [1, 2, 2, 4]' in text
    assert '"names": ["a]", "[b", "c,\\n"]' in text


def test_tumor_reach_is_the_share_of_the_true_tumor_inside_the_predicted_liver():
    import numpy as np
    import SimpleITK as sitk

    truth = np.zeros((4, 10, 10), np.uint8)
    truth[:, 2:8, 2:8] = 1
    truth[1:3, 6:8, 2:8] = 2  # 24 tumor voxels at the liver's edge
    predicted = np.zeros_like(truth)
    predicted[:, 2:7, 2:8] = 1  # the liver stage leaves out row 7: 12 of the tumor voxels
    reach = demo_models.tumor_reach(sitk.GetImageFromArray(predicted), sitk.GetImageFromArray(truth))
    assert reach == {"fraction": 0.5, "max_dsc": round(2 * 12 / 36, 4)}
    predicted[truth == 2] = 2  # tumor label counts as inside the liver
    assert demo_models.tumor_reach(sitk.GetImageFromArray(predicted), sitk.GetImageFromArray(truth))["fraction"] == 1.0
    assert demo_models.tumor_reach(sitk.GetImageFromArray(predicted), sitk.GetImageFromArray(truth * 0)) == {
        "fraction": 1.0, "max_dsc": 1.0}


@pytest.mark.slow
def test_demo_models_trains_exports_evaluates_and_registers_both_stages(tmp_path, monkeypatch, capsys):
    """`livertumor demo-models` end to end on tiny phantoms, one iteration per stage, into a copy of the manifest;
    then `--stages tumor` retrains the tumor stage on the masks of the liver model that the first run registered."""
    import json
    import shutil
    import sys

    from LiverTumorSegLib.cli import main

    manifest = tmp_path / "models" / "models.json"
    manifest.parent.mkdir()
    shutil.copy(demo_models.MANIFEST_FILE, manifest)
    monkeypatch.setattr(demo_models, "MANIFEST_FILE", manifest)
    monkeypatch.setattr(demo_models, "DEMO_DIR", manifest.parent / "demo")
    coarse = {"spacing_mm": (9.0, 9.0, 9.0), "roi_size": (32, 32, 16)}  # the recipes' grids would take minutes
    monkeypatch.setattr(demo_models, "LIVER_RECIPE", dict(demo_models.LIVER_RECIPE, **coarse))
    monkeypatch.setattr(demo_models, "TUMOR_RECIPE", dict(demo_models.TUMOR_RECIPE, **coarse))
    others = {m["id"] for m in json.loads(manifest.read_text())["models"]} - {"demo-liver-segresnet",
                                                                             "demo-tumor-segresnet"}
    tiny = ["--size", "64", "--phantoms", "3", "--tumor-phantoms", "3", "--held-out", "1", "--epochs", "1",
            "--iterations", "1", "--val-interval", "1"]

    argv = ["demo-models", "--work", str(tmp_path / "work"), "--tumor-crop-fraction", "0.5", *tiny]
    monkeypatch.setattr(sys, "argv", ["livertumor", *argv])
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary) == {"liver", "tumor"} and summary["liver"]["cases"] == 1

    models = load_manifest(manifest)
    assert others <= set(models)  # the other entries are kept
    liver, tumor = models["demo-liver-segresnet"], models["demo-tumor-segresnet"]
    assert liver.demo_only and tumor.demo_only and tumor.input_channels == ("ct", "liver_mask")
    assert liver.local_file().parent == tumor.local_file().parent == manifest.parent / "demo"
    card = (manifest.parent / "demo" / "demo_tumor_segresnet.md").read_text()
    assert "livertumor demo-models --work" in card and "--size 64" in card
    assert "seeds 2000..2002" in card and "liver-mask input predicted by demo-liver-segresnet" in card
    assert "| phantom_5000.nrrd |" in card  # the held-out table
    liver_card = (manifest.parent / "demo" / "demo_liver_segresnet.md").read_text()
    assert "patches centred on tumor 50% of the time" in liver_card
    liver_sha = liver.sha256

    first_tumor = tmp_path / "work" / "tumor" / "best.pt"
    argv = ["demo-models", "--work", str(tmp_path / "work_tumor"), "--stages", "tumor", "--init-weights",
            str(first_tumor), "--learning-rate", "5e-4", "--lesion-balanced-crops", *tiny]
    monkeypatch.setattr(sys, "argv", ["livertumor", *argv])
    assert main(argv) == 0
    again = load_manifest(manifest)
    assert again["demo-liver-segresnet"].sha256 == liver_sha  # the liver model is used, not retrained
    assert again["demo-tumor-segresnet"].local_file().is_file()
    assert (tmp_path / "work_tumor" / "tumor" / "best.pt").is_file()
    tuned_card = (manifest.parent / "demo" / "demo_tumor_segresnet.md").read_text()
    assert "Adam lr 0.0005" in tuned_card and "the tumor centres split evenly between lesions" in tuned_card
    first_sha = hashlib.sha256(first_tumor.read_bytes()).hexdigest()
    assert f"started from the network weights in `best.pt` (SHA-256 `{first_sha}`)" in tuned_card


def test_demo_models_refuses_options_that_would_do_nothing_or_harm(tmp_path, capsys):
    from LiverTumorSegLib.cli import main

    work = tmp_path / "work"
    for bad in (["--tumor-crop-fraction", "1.5"], ["--restart-lr", "-1e-4"], ["--learning-rate", "0"]):
        with pytest.raises(SystemExit) as stopped:
            main(["demo-models", "--work", str(work), *bad])
        assert stopped.value.code == 2
    assert "expected a share in [0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--tumor-crop-fraction is for the liver stage"):
        main(["demo-models", "--work", str(work), "--stages", "tumor", "--tumor-crop-fraction", "0.3"])
    with pytest.raises(SystemExit, match="--lesion-balanced-crops is for the tumor stage"):
        main(["demo-models", "--work", str(work), "--stages", "liver", "--lesion-balanced-crops"])
    with pytest.raises(SystemExit, match="--init-weights fine-tunes one stage"):
        main(["demo-models", "--work", str(work), "--init-weights", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit, match="x.pt: no such file"):
        main(["demo-models", "--work", str(work), "--stages", "tumor", "--init-weights", str(tmp_path / "x.pt")])
    assert not work.exists()  # refused before any phantom was written
