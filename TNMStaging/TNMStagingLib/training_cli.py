"""``tnmstaging features | train | evaluate | predict``: the learned stage from image and measured features.

    tnmstaging features --cohort DIR --table stages.csv --out features.csv [--encoder vit_b|medsam]
                        [--checkpoint FILE | --random-init [--seed S]] [--slices 8] [--measured-only]
    tnmstaging train    --features features.csv --out model.tnm [--merge-stage0] [--n-features 50]
    tnmstaging evaluate --model model.tnm --features features.csv
    tnmstaging predict  --model model.tnm --image CT --labels LABELS
    tnmstaging demo-cohort --out DIR [--per-stage 6]     (phantom cohort for the demo model only)

``features`` writes one row per matched scan and lists every excluded scan with its reason in
``<out>_excluded.csv``. ``train`` runs the patient-level 5-fold cross-validation, prints its table, fits on
all rows and saves one artifact holding the metrics. ``predict`` prints one JSON object (probability per
stage, the model's cross-validation metrics, demo flag, encoder provenance). ``predict_case`` is the same
as a function (used by the module's background job). Heavy imports stay inside the functions.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

RANDOM_INIT_NOTE = "randomly initialised encoder: its image features carry no learned meaning"


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``features``, ``train``, ``evaluate`` and ``predict`` sub-commands."""
    p = subparsers.add_parser("features", help="image + measured staging features of a cohort (CSV)")
    p.add_argument("--cohort", required=True, type=Path, help="cohort folder (layout: TNMStagingLib.cohort)")
    p.add_argument(
        "--table", required=True, type=Path, help="CSV or Excel table: patient id, scan date, stage"
    )
    p.add_argument("--out", required=True, type=Path, help="features CSV to write")
    p.add_argument("--excluded", type=Path, help="excluded scans CSV (default: <out>_excluded.csv)")
    p.add_argument("--tolerance-days", type=int, default=0, help="max days between scan and table date")
    _add_encoder_arguments(p)
    p.add_argument("--slices", type=int, default=8, help="max axial slices per scan (default 8)")
    p.add_argument("--pooling", choices=("mean", "mean_max"), default="mean", help="per-slice pooling")
    p.add_argument("--random-init", action="store_true", help="random encoder weights (demo/tests only)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-init (default 0)")
    p.add_argument("--measured-only", action="store_true", help="measured features only, no encoder")
    p.set_defaults(func=_cli_features)

    p = subparsers.add_parser("train", help="cross-validate and train the stage classifier (one artifact)")
    p.add_argument("--features", required=True, type=Path, help="features CSV from `tnmstaging features`")
    p.add_argument("--out", required=True, type=Path, help="model artifact to write (e.g. model.tnm)")
    p.add_argument("--merge-stage0", action="store_true", help="merge stage 0 into stage I")
    p.add_argument("--n-features", type=int, default=50, help="features kept by the selection (default 50)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds, MI and XGBoost (default 0)")
    p.add_argument("--demo", action="store_true", help="mark the model demo-only (phantom-trained)")
    p.add_argument("--description", default="", help="training data description stored in the model")
    p.add_argument("--cv-json", type=Path, help="also write the cross-validation result as JSON")
    p.set_defaults(func=_cli_train)

    p = subparsers.add_parser("evaluate", help="metrics of a trained model on a features CSV")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--features", required=True, type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=_cli_evaluate)

    p = subparsers.add_parser("predict", help="stage probabilities of one CT + labelmap (JSON)")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--image", required=True, type=Path, help="CT (NIfTI/NRRD/... or DICOM series folder)")
    p.add_argument("--labels", required=True, type=Path, help="0/1/2 labelmap on the CT grid")
    p.add_argument("--checkpoint", type=Path, help="encoder checkpoint (default: the model manifest's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=_cli_predict)
    _register_demo_cohort(subparsers)


def _register_demo_cohort(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo-cohort", help="synthetic phantom cohort staged by the AJCC rules (for the demo model only)"
    )
    p.add_argument("--out", required=True, type=Path, help="cohort folder to create (with stages.csv)")
    p.add_argument("--per-stage", type=int, default=6, help="phantoms per stage group (default 6)")
    p.add_argument("--max-seeds", type=int, default=200, help="phantom seeds to try at most (default 200)")
    p.add_argument("--size-xy", type=int, default=128, help="in-plane matrix of each phantom (default 128)")
    p.set_defaults(func=_cli_demo_cohort)


def phantom_stage(tumors) -> tuple[str, str]:
    """AJCC 8th HCC stage of a phantom from its tumors' design diameters; a tumor touching a vessel counts as
    vascular invasion ``"suspected"`` (turns a solitary tumor > 2 cm into T2); N0 M0. Returns (stage, T)."""
    from . import ajcc

    vascular = "suspected" if any(t.touches_vessel for t in tumors) else "none"
    result = ajcc.stage([t.diameter_mm for t in tumors], vascular_invasion=vascular)
    return result.stage, result.T


def write_phantom_cohort(out: Path, per_stage: int = 6, max_seeds: int = 200, size_xy: int = 128) -> dict:
    """Phantoms (``LiverTumorSegLib.phantom``, 1-4 tumors, 5 mm slices) written as ``out/PHnnn/20240101/``
    ``ct.nii.gz + labels.nii.gz`` with ``out/stages.csv``, seeds tried in order until each AJCC stage group
    has ``per_stage`` phantoms. Returns ``{stage: count}``."""
    import SimpleITK as sitk

    from LiverTumorSegLib.phantom import make_phantom

    out.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    rows = [["patient_id", "scan_date", "stage", "T", "diameters_mm", "touches_vessel", "seed"]]
    for seed in range(max_seeds):
        n_tumors = 1 if seed % 2 == 0 else 2 + (seed // 2) % 3
        phantom = make_phantom(seed, size_xy=size_xy, slice_thickness_mm=5.0, n_tumors=n_tumors)
        if not phantom.tumors:
            continue
        stage, t = phantom_stage(phantom.tumors)
        if counts[stage] >= per_stage:
            continue
        counts[stage] += 1
        folder = out / f"PH{seed:03d}" / "20240101"
        folder.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(phantom.ct, str(folder / "ct.nii.gz"), useCompression=True)
        sitk.WriteImage(phantom.labels, str(folder / "labels.nii.gz"), useCompression=True)
        diameters = " ".join(f"{tumor.diameter_mm:g}" for tumor in phantom.tumors)
        vessel = any(tumor.touches_vessel for tumor in phantom.tumors)
        rows.append([f"PH{seed:03d}", "2024-01-01", stage, t, diameters, str(vessel).lower(), seed])
        if len(counts) >= 4 and min(counts.values()) >= per_stage:
            break
    with open(out / "stages.csv", "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows(rows)
    return dict(counts)


def _cli_demo_cohort(args: argparse.Namespace) -> int:
    counts = write_phantom_cohort(args.out, args.per_stage, args.max_seeds, args.size_xy)
    print(json.dumps({"cohort": str(args.out), "table": str(args.out / "stages.csv"), "stages": counts}))
    return 0


def _add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--encoder", choices=("vit_b", "medsam"), default="vit_b", help="SAM encoder / input mode"
    )
    parser.add_argument("--checkpoint", type=Path, help="encoder checkpoint (default: the model manifest's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--batch-size", type=int, default=2, help="slices per encoder batch (default 2)")


def _error(command: str, message: str) -> int:
    print(f"tnmstaging {command}: error: {message}", file=sys.stderr)
    return 2


def _encoder(spec, checkpoint: Path | None, random_init: bool, seed: int | None):
    """Built encoder: the given checkpoint, a seeded random init, or the manifest's verified checkpoint."""
    from . import features

    if checkpoint is None and random_init:
        return features.build_encoder(spec, None, seed=seed)
    return features.build_encoder(spec, checkpoint or features.resolve_checkpoint(spec))


def _cli_features(args: argparse.Namespace) -> int:
    from LiverTumorSegLib.model_registry import RegistryError

    from . import cohort, features

    try:
        config = features.FeatureConfig(
            encoder=features.ENCODERS[args.encoder],
            max_slices=args.slices,
            pooling=args.pooling,
            image_features=not args.measured_only,
        )
        encoder = (
            None
            if args.measured_only
            else _encoder(config.encoder, args.checkpoint, args.random_init, args.seed)
        )
        found = cohort.load_cohort(args.cohort, args.table, args.tolerance_days)
    except (ValueError, RegistryError) as error:
        hint = "" if args.random_init else " (or --random-init for a demo, or --measured-only)"
        return _error("features", f"{error}{hint}")
    if encoder is not None and encoder.random_init:
        print(f"tnmstaging features: warning: {RANDOM_INIT_NOTE}", file=sys.stderr)
    records, excluded = [], list(found.excluded)
    for number, case in enumerate(found.cases, start=1):
        prefix = f"[{number}/{len(found.cases)}] {case.scan.patient_id}/{case.scan.name}"
        try:
            ct, labels = cohort.read_scan(case.scan)
            result = features.case_features(
                ct,
                labels,
                config,
                encoder,
                batch_size=args.batch_size,
                device=args.device,
                progress=lambda fraction, message, p=prefix: print(f"{p}: {message}", file=sys.stderr),
            )
        except ValueError as error:
            excluded.append(
                cohort.Exclusion(case.scan.patient_id, case.scan.name, str(case.scan.image), str(error))
            )
            continue
        records.append(_record(case, result, config, encoder))
    excluded_path = args.excluded or args.out.with_name(args.out.stem + "_excluded.csv")
    cohort.write_exclusions(excluded, excluded_path)
    if not records:
        return _error("features", f"no usable scan (reasons in {excluded_path})")
    cohort.write_feature_table(args.out, records, config.feature_names())
    summary = {"cases": len(records), "excluded": len(excluded), "out": str(args.out)}
    summary |= {
        "excluded_csv": str(excluded_path),
        "encoder": records[0]["encoder"],
        "weights": records[0]["weights"],
    }
    print(json.dumps(summary))
    return 0


def _record(case, result, config, encoder) -> dict[str, Any]:
    return {
        "patient_id": case.scan.patient_id,
        "scan": case.scan.name,
        "scan_date": case.scan.scan_date.isoformat(),
        "stage": case.stage,
        "encoder": result.encoder,
        "weights": result.weights,
        "encoder_seed": "" if encoder is None or encoder.seed is None else encoder.seed,
        "input_mode": result.input_mode,
        "n_slices": len(result.slices),
        "feature_config": json.dumps(config.to_dict(), sort_keys=True),
        **result.values,
    }


def _training_description(table, path: Path) -> str:
    counts = Counter(table.stages)
    stages = ", ".join(f"{stage}: {counts[stage]}" for stage in sorted(counts))
    return f"{len(table.meta)} scans of {len(set(table.patient_ids))} patients from {path.name} (stages {stages})"


def _cli_train(args: argparse.Namespace) -> int:
    from . import classifier, cohort

    try:
        table = cohort.read_feature_table(args.features)
        estimator = classifier.StageClassifier(
            n_features=args.n_features, merge_stage0_into_1=args.merge_stage0, random_state=args.seed
        )
        cv = classifier.cross_validate(
            table.X,
            table.stages,
            table.patient_ids,
            estimator=estimator,
            n_splits=args.folds,
            seed=args.seed,
            feature_names=table.feature_names,
        )
    except ValueError as error:
        return _error("train", str(error))
    print(
        f"{args.folds}-fold patient-level cross-validation ({cv['n_patients']} patients, seed {args.seed}):"
    )
    print(classifier.format_cv_table(cv))
    if cv["auc_ovr_macro_sklearn"] is not None:
        print(
            f"\nroc_auc_score(multi_class='ovr', average='macro') pooled: {cv['auc_ovr_macro_sklearn']:.3f}"
        )
    fitted = estimator.fit(table.X, table.stages, feature_names=table.feature_names)
    model = classifier.StagingModel(
        classifier=fitted,
        feature_config=table.feature_config,
        encoder=table.encoder,
        cv=cv,
        demo_only=args.demo,
        training_data=args.description or _training_description(table, args.features),
    )
    classifier.save_model(args.out, model)
    if args.cv_json:
        args.cv_json.write_text(json.dumps(cv, indent=1), encoding="utf-8")
    if table.encoder["weights"] == "random-init":
        print(f"note: {RANDOM_INIT_NOTE}", file=sys.stderr)
    print(
        f"\nsaved {args.out} ({len(fitted.selected_features_)} selected features, classes {list(fitted.classes_)})"
    )
    return 0


def _cli_evaluate(args: argparse.Namespace) -> int:
    from . import classifier, cohort

    try:
        model = classifier.load_model(args.model)
        table = cohort.read_feature_table(args.features)
        X = _columns_for(model, table)
    except ValueError as error:
        return _error("evaluate", str(error))
    clf = model.classifier
    metrics = classifier.classification_metrics(
        clf.prepare_labels(table.stages), clf.predict_proba(X), clf.classes_
    )
    if args.json:
        print(json.dumps(metrics))
    else:
        summary = {"folds": [], **metrics}
        print(f"{args.model.name} on {args.features.name} ({metrics['n']} scans):")
        print(classifier.format_cv_table(summary, pooled_label="all"))
    return 0


def _columns_for(model, table):
    """Feature matrix of ``table`` in the model's column order; ``ValueError`` when incompatible."""
    import numpy as np

    missing = [name for name in model.feature_names if name not in table.feature_names]
    if missing:
        raise ValueError(
            f"the feature table lacks {len(missing)} of the model's features ({', '.join(missing[:5])}...)"
        )
    if table.encoder["weights"] != model.encoder["weights"] or table.feature_config != model.feature_config:
        raise ValueError(
            "the feature table was computed with another encoder, weights or feature settings than the model "
            f"(table {table.encoder['weights']}, model {model.encoder['weights']})"
        )
    index = [table.feature_names.index(name) for name in model.feature_names]
    return np.asarray(table.X)[:, index]


def predict_case(
    model,
    ct,
    labels,
    *,
    checkpoint: Path | None = None,
    device: str = "auto",
    progress=None,
    cancel: threading.Event | None = None,
) -> dict[str, Any]:
    """Stage probabilities of one CT + 0/1/2 labelmap (``sitk.Image`` on one grid) with a loaded model.

    The encoder runs only when the model selected image features: a random-init model rebuilds its seeded
    encoder; otherwise ``checkpoint`` (or the manifest's) must have the SHA-256 the model was trained with.
    """
    from dataclasses import replace

    from . import features

    config = features.FeatureConfig.from_dict(model.feature_config)
    encoder = None
    if config.image_features and model.needs_image_features():
        random_init = model.encoder["weights"] == features.RANDOM_INIT
        encoder = _encoder(config.encoder, checkpoint, random_init, model.encoder.get("seed"))
        if encoder.weights != model.encoder["weights"]:
            raise ValueError(
                f"encoder weights {encoder.weights} differ from the model's {model.encoder['weights']}"
            )
    else:
        config = replace(config, image_features=False)
    result = features.case_features(
        ct, labels, config, encoder, device=device, progress=progress, cancel=cancel
    )
    probabilities = model.predict_values(result.values)
    cv = model.cv or {}
    keys = ("accuracy", "balanced_accuracy", "auc_ovr_macro", "n", "n_patients", "n_splits")
    output = {
        "stage": max(probabilities, key=probabilities.get),
        "probabilities": probabilities,
        "demo_only": model.demo_only,
        "cv_metrics": {key: cv.get(key) for key in keys},
        "training_data": model.training_data,
        "encoder": dict(model.encoder) | {"used": encoder is not None},
        "measured": {name: result.values[name] for name in features.MEASURED_FEATURES},
    }
    if model.encoder.get("weights") == features.RANDOM_INIT:
        output["encoder"]["note"] = RANDOM_INIT_NOTE
    return output


def _cli_predict(args: argparse.Namespace) -> int:
    from LiverTumorSegLib.model_registry import RegistryError

    from . import classifier, cohort

    try:
        model = classifier.load_model(args.model)
        ct = cohort.read_image(args.image)
        labels = cohort.read_image(args.labels)
        import SimpleITK as sitk

        output = predict_case(
            model,
            sitk.Cast(ct, sitk.sitkFloat32),
            sitk.Cast(labels, sitk.sitkUInt8),
            checkpoint=args.checkpoint,
            device=args.device,
        )
    except (ValueError, RegistryError) as error:
        return _error("predict", str(error))
    print(json.dumps(output | {"model": str(args.model)}))
    return 0
