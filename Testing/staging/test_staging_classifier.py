"""Stage classifier: feature selection, scikit-learn contract, stage labels, patient-level cross-validation,
metrics, the single-file artifact, and `tnmstaging train | evaluate | predict`."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.stats import rankdata
from sklearn.base import clone

from TNMStagingLib.cli import main
from TNMStagingLib.core import classifier, features, predict
from TNMStagingLib.training import cohort

STAGES = np.array(["0", "I", "II", "IIIA"])


def _data(n_patients: int = 32, scans_per_patient: int = 2, n_noise: int = 12, seed: int = 0):
    """X (rows, 2 + n_noise): column 1 carries the stage, the others are noise; groups = patient ids."""
    rng = np.random.default_rng(seed)
    patient_stage = np.resize(np.arange(4), n_patients)
    groups = np.repeat([f"P{i:02d}" for i in range(n_patients)], scans_per_patient)
    stage_index = np.repeat(patient_stage, scans_per_patient)
    X = rng.normal(size=(len(groups), 2 + n_noise))
    X[:, 1] = stage_index + rng.normal(0, 0.15, len(groups))
    X[::7, 5] = np.nan
    return X, STAGES[stage_index], groups


def test_stage_labels_normalize_order_and_merge():
    assert [classifier.normalize_stage(v) for v in (3, 3.0, " iiia ", "Stage II")] == ["3", "3", "IIIA", "II"]
    with pytest.raises(ValueError):
        classifier.normalize_stage(2.5)
    ordered = sorted(["IVB", "II", "0", "IA", "I", "IIIA", "IB", "x"], key=classifier.stage_sort_key)
    assert ordered == ["0", "I", "IA", "IB", "II", "IIIA", "IVB", "x"]
    assert classifier.merge_stage0(["0", "IB", "IA", "II"]) == ["IA", "IB", "IA", "II"]
    assert classifier.merge_stage0(["0", "1", "2"]) == ["1", "1", "2"]
    assert classifier.merge_stage0(["0", "II"]) == ["I", "II"]


def test_selection_combines_mutual_information_and_importance_ranks():
    X, y, _ = _data()
    clf = classifier.StageClassifier(n_features=4, n_estimators=30).fit(X, y)
    mean_rank = (rankdata(-clf.mi_scores_) + rankdata(-clf.importance_scores_)) / 2
    assert list(clf.selected_features_) == list(np.lexsort((np.arange(X.shape[1]), mean_rank))[:4])
    assert clf.selected_features_[0] == 1  # the informative column ranks first on both
    capped = classifier.StageClassifier(n_features=50, n_estimators=10).fit(X, y)
    assert sorted(capped.selected_features_) == list(range(X.shape[1]))


def test_estimator_contract_classes_and_probabilities():
    X, y, _ = _data()
    clf = classifier.StageClassifier(n_features=5, n_estimators=30, random_state=1)
    assert clone(clf).get_params() == clf.get_params()
    clf.fit(X, y, feature_names=[f"f{i}" for i in range(X.shape[1])])
    assert list(clf.classes_) == ["0", "I", "II", "IIIA"]
    assert clf.label_map_ == {"0": 0, "I": 1, "II": 2, "IIIA": 3}
    proba = clf.predict_proba(X)
    assert proba.shape == (len(y), 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert (clf.predict(X) == y).mean() > 0.9
    assert clf.selected_feature_names_[0] == "f1"
    with pytest.raises(ValueError, match="features"):
        clf.predict_proba(X[:, :3])
    with pytest.raises(ValueError, match="two stages"):
        classifier.StageClassifier().fit(X[:4], ["II"] * 4)


def test_merge_stage0_and_integer_stages():
    X, y, _ = _data()
    merged = classifier.StageClassifier(n_features=3, n_estimators=10, merge_stage0_into_1=True).fit(X, y)
    assert list(merged.classes_) == ["I", "II", "IIIA"]
    numeric = classifier.StageClassifier(n_features=3, n_estimators=10).fit(X, [int(s == "II") for s in y])
    assert list(numeric.classes_) == ["0", "1"] and numeric.predict_proba(X).shape == (len(y), 2)


def test_classification_metrics_by_hand():
    truth = ["A", "A", "B", "C"]
    proba = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4]])
    m = classifier.classification_metrics(truth, proba, ["A", "B", "C"])
    assert m["accuracy"] == 0.5  # predicted A, B, B, A
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    # One-vs-rest AUCs: A 0.75 (0.8, 0.3 vs 0.2, 0.5), B 1.0, C 1.0.
    assert m["auc_ovr_macro"] == pytest.approx((0.75 + 1 + 1) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_cross_validation_keeps_each_patient_in_one_fold():
    X, y, groups = _data(n_patients=30, scans_per_patient=3)
    estimator = classifier.StageClassifier(n_features=5, n_estimators=30)
    cv = classifier.cross_validate(X, y, groups, estimator=estimator, n_splits=5, seed=2)
    tested = [set(fold["test_patients"]) for fold in cv["folds"]]
    assert sum(len(t) for t in tested) == 30 and set().union(*tested) == set(groups)
    for fold in cv["folds"]:
        rows = np.isin(groups, list(fold["test_patients"]))
        assert fold["n"] == rows.sum()  # every scan of a test patient is in that fold's test set
    assert np.sum(cv["confusion_matrix"]) == len(y) and cv["n_patients"] == 30
    assert cv["accuracy"] > 0.8 and cv["auc_ovr_macro"] > 0.9 and cv["auc_ovr_macro_sklearn"] > 0.9
    assert "| pooled | 90 |" in classifier.format_cv_table(cv)
    with pytest.raises(ValueError, match="patients cannot fill"):
        classifier.cross_validate(X[:12], y[:12], groups[:12], n_splits=5)


def test_cross_validation_with_a_class_missing_from_folds():
    X, y, groups = _data(n_patients=24, scans_per_patient=1)
    y = y.copy()
    y[:2] = "IVB"  # two patients: at most two folds test it, at least three train without it
    X[:2, 1] = 6.0
    estimator = classifier.StageClassifier(n_features=4, n_estimators=20)
    with pytest.warns(UserWarning, match="least populated class"):
        cv = classifier.cross_validate(X, y, groups, estimator=estimator)
    assert cv["classes"] == ["0", "I", "II", "IIIA", "IVB"]
    assert np.sum(cv["confusion_matrix"]) == 24
    assert any("IVB" not in fold["auc_classes"] for fold in cv["folds"])
    assert all(fold["auc_ovr_macro"] is not None for fold in cv["folds"])


def _fitted_model(**extra) -> classifier.StagingModel:
    X, y, groups = _data()
    names = [f"f{i}" for i in range(X.shape[1])]
    clf = classifier.StageClassifier(n_features=5, n_estimators=30).fit(X, y, feature_names=names)
    cv = classifier.cross_validate(X, y, groups, estimator=clone(clf), feature_names=names)
    return classifier.StagingModel(clf, {"k": 1}, {"name": "none", "weights": "none"}, cv, **extra)


def test_artifact_round_trip_and_wrong_files(tmp_path):
    model = _fitted_model(demo_only=True, training_data="synthetic rows")
    path = classifier.save_model(tmp_path / "m.tnm", model)
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["booster.ubj", "staging_model.json"]
    loaded = classifier.load_model(path)
    X, _, _ = _data()
    np.testing.assert_allclose(
        loaded.classifier.predict_proba(X), model.classifier.predict_proba(X), rtol=1e-6
    )
    assert loaded.demo_only and loaded.training_data == "synthetic rows" and loaded.feature_config == {"k": 1}
    assert loaded.cv["accuracy"] == model.cv["accuracy"]
    assert list(loaded.classifier.selected_features_) == list(model.classifier.selected_features_)
    assert loaded.predict_values({"f1": 3.0})["IIIA"] > 0.5
    (tmp_path / "text.tnm").write_text("hello")
    with pytest.raises(ValueError, match="not a TNMStaging model"):
        classifier.load_model(tmp_path / "text.tnm")
    document = json.loads(zipfile.ZipFile(path).read("staging_model.json"))
    with zipfile.ZipFile(tmp_path / "future.tnm", "w") as archive:
        archive.writestr("staging_model.json", json.dumps(document | {"format_version": 99}))
        archive.writestr("booster.ubj", b"")
    with pytest.raises(ValueError, match="format version 99"):
        classifier.load_model(tmp_path / "future.tnm")


# --- command line and predict_case on small synthetic cases -------------------------------------------------

TINY = features.EncoderSpec("tiny", 128, 32, 2, 2, (1,), 16, window_size=4)


def _case(diameter_vox: int, seed: int) -> tuple[sitk.Image, sitk.Image]:
    rng = np.random.default_rng(seed)
    labels = np.zeros((6, 32, 32), np.uint8)
    labels[1:5, 2:30, 2:30] = 1
    labels[2:4, 4 : 4 + diameter_vox, 4 : 4 + diameter_vox] = 2
    ct = rng.normal(60, 5, labels.shape).astype(np.float32)
    ct[labels == 2] += 40
    label_image = sitk.GetImageFromArray(labels)
    label_image.SetSpacing((2.0, 2.0, 5.0))
    ct_image = sitk.GetImageFromArray(ct)
    ct_image.CopyInformation(label_image)
    return ct_image, label_image


def _feature_table(tmp_path, config: features.FeatureConfig, encoder=None):
    records = []
    for index in range(20):
        stage = ("IA", "IB", "II", "IIIA")[index % 4]
        ct, labels = _case(diameter_vox=3 + 5 * (index % 4), seed=index)
        result = features.case_features(ct, labels, config, encoder, device="cpu")
        records.append(
            {
                "patient_id": f"P{index:02d}",
                "scan": "s",
                "scan_date": "2024-01-01",
                "stage": stage,
                "encoder": result.encoder,
                "weights": result.weights,
                "encoder_seed": "" if encoder is None else encoder.seed,
                "input_mode": result.input_mode,
                "n_slices": len(result.slices),
                "feature_config": json.dumps(config.to_dict(), sort_keys=True),
                **result.values,
            }
        )
    return cohort.write_feature_table(tmp_path / "features.csv", records, config.feature_names())


def test_cli_train_evaluate_predict(tmp_path, capsys):
    config = features.FeatureConfig(encoder=TINY, image_features=False)
    table = _feature_table(tmp_path, config)
    model_path = tmp_path / "model.tnm"
    argv = ["train", "--features", str(table), "--out", str(model_path), "--n-features", "5", "--folds", "4"]
    assert main(argv + ["--cv-json", str(tmp_path / "cv.json")]) == 0
    out = capsys.readouterr().out
    assert "| pooled | 20 |" in out and "Confusion matrix" in out and model_path.is_file()
    cv = json.loads((tmp_path / "cv.json").read_text())
    assert cv["n_splits"] == 4 and cv["accuracy"] >= 0.75
    model = classifier.load_model(model_path)
    assert not model.demo_only and "20 scans of 20 patients" in model.training_data
    assert model.encoder["weights"] == "none" and not model.needs_image_features()

    assert main(["evaluate", "--model", str(model_path), "--features", str(table), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 20 and metrics["accuracy"] == 1.0

    ct, labels = _case(diameter_vox=18, seed=99)
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(labels, str(tmp_path / "labels.nrrd"))
    argv = ["predict", "--model", str(model_path), "--image", str(tmp_path / "ct.nrrd")]
    assert main(argv + ["--labels", str(tmp_path / "labels.nrrd")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stage"] == "IIIA" and set(result["probabilities"]) == {"IA", "IB", "II", "IIIA"}
    assert sum(result["probabilities"].values()) == pytest.approx(1.0)
    assert result["cv_metrics"]["accuracy"] == cv["accuracy"] and result["demo_only"] is False
    assert result["measured"]["tumor_count"] == 1

    assert main(["predict", "--model", str(table), "--image", "x", "--labels", "y"]) == 2
    assert "not a TNMStaging model" in capsys.readouterr().err


def test_predict_case_rebuilds_the_seeded_random_encoder(tmp_path):
    config = features.FeatureConfig(encoder=TINY, max_slices=1)
    encoder = features.build_encoder(TINY, seed=5)
    table = cohort.read_feature_table(_feature_table(tmp_path, config, encoder))
    assert table.encoder == {"name": "tiny", "input_mode": "sam", "weights": "random-init", "seed": 5}
    clf = classifier.StageClassifier(n_features=40, n_estimators=20).fit(
        table.X, table.stages, feature_names=table.feature_names
    )
    model = classifier.StagingModel(clf, table.feature_config, table.encoder, cv=None, demo_only=True)
    assert model.needs_image_features()
    ct, labels = _case(diameter_vox=8, seed=3)
    result = predict.predict_case(model, ct, labels, device="cpu")
    direct = features.case_features(ct, labels, config, encoder, device="cpu")
    assert result["probabilities"] == pytest.approx(model.predict_values(direct.values))
    assert result["encoder"]["used"] and "no learned meaning" in result["encoder"]["note"]
    assert result["demo_only"] is True


def test_committed_demo_model_is_labelled_and_matches_its_card():
    from pathlib import Path

    models = Path(__file__).resolve().parents[2] / "TNMStaging" / "Resources" / "Models"
    model = classifier.load_model(models / "demo_staging.tnm")
    assert model.demo_only and "DEMO ONLY" in model.training_data
    assert model.encoder["weights"] == "random-init" and model.encoder["name"] == "vit_b"
    config = features.FeatureConfig.from_dict(model.feature_config)
    assert config.encoder == features.VIT_B and len(model.feature_names) == 256 + len(
        features.MEASURED_FEATURES
    )
    assert list(model.classifier.classes_) == ["IA", "IB", "II", "IIIA"]
    assert model.cv["n_splits"] == 5 and model.cv["n_patients"] == 32
    card = (models / "demo_staging.md").read_text(encoding="utf-8")
    assert "no learned meaning" in card and "DEMO ONLY" in card
    pooled = " | ".join(f"{model.cv[k]:.3f}" for k in ("accuracy", "balanced_accuracy", "auc_ovr_macro"))
    assert f"| pooled | 32 | {pooled} |" in card
    assert (models / "demo_staging.tnm").stat().st_size < 200_000
