"""``tnmstaging features | train | evaluate | predict | demo-cohort``: the learned stage from image and
measured features.

    tnmstaging features --cohort DIR --table stages.csv --out features.csv [--encoder vit_b|medsam]
                        [--checkpoint FILE | --random-init [--seed S]] [--slices 8] [--measured-only]
    tnmstaging train    --features features.csv --out model.tnm [--merge-stage0] [--n-features 50]
    tnmstaging evaluate --model model.tnm --features features.csv
    tnmstaging predict  --model model.tnm --image CT --labels LABELS
    tnmstaging demo-cohort --out DIR [--per-stage 6]     (phantom cohort for the demo model only)

``features`` writes one row per matched scan and lists every excluded scan with its reason in
``<out>_excluded.csv``. ``train`` runs the patient-level 5-fold cross-validation, prints its table, fits on
all rows and saves one artifact holding the metrics. ``predict`` prints one JSON object (probability per
stage, the model's cross-validation metrics, demo flag, encoder provenance), as ``core.predict.predict_case``
returns it to the module's background job. Heavy imports stay inside the functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from LiverTumorSegLib.core.plausibility import check_finite, check_labelmap, check_scalar_3d
from LiverTumorSegLib.io.atomic import atomic_write, check_output_file, write_text
from TNMStagingLib.core.predict import RANDOM_INIT_NOTE, build_encoder, model_columns, predict_case
from TNMStagingLib.training.demo_cohort import write_phantom_cohort


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``features``, ``train``, ``evaluate`` and ``predict`` sub-commands."""
    p = subparsers.add_parser("features", help="image + measured staging features of a cohort (CSV)")
    p.add_argument("--cohort", required=True, type=Path, help="cohort folder (layout: TNMStagingLib.training.cohort)")
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
    p.add_argument("--overwrite", action="store_true", help="replace --out and --excluded when they exist")
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
    p.add_argument("--overwrite", action="store_true", help="replace --out and --cv-json when they exist")
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


def _cli_features(args: argparse.Namespace) -> int:
    from LiverTumorSegLib.models.registry import RegistryError
    from TNMStagingLib.core import features
    from TNMStagingLib.training import cohort

    excluded_path = args.excluded or args.out.with_name(args.out.stem + "_excluded.csv")
    try:
        config = features.FeatureConfig(
            encoder=features.ENCODERS[args.encoder],
            max_slices=args.slices,
            pooling=args.pooling,
            image_features=not args.measured_only,
        )
        found = cohort.load_cohort(args.cohort, args.table, args.tolerance_days)
    except ValueError as error:
        return _error("features", str(error))
    try:
        encoder = (
            None
            if args.measured_only
            else build_encoder(config.encoder, args.checkpoint, args.random_init, args.seed)
        )
    except (ValueError, RegistryError) as error:  # the encoder's checkpoint: name the ways around it not taken
        hint = "" if args.random_init else " (or --random-init for a demo, or --measured-only)"
        return _error("features", f"{error}{hint}")
    try:  # the outputs, before the work
        for path, what in ((args.out, "--out"), (excluded_path, "--excluded")):
            check_output_file(path, inputs=[args.cohort, args.table], overwrite=args.overwrite, what=what)
    except ValueError as error:
        return _error("features", str(error))
    if encoder is not None and encoder.random_init:
        print(f"tnmstaging features: warning: {RANDOM_INIT_NOTE}", file=sys.stderr)
    records, excluded = cohort.extract_features(found, config, encoder, batch_size=args.batch_size,
                                                device=args.device, log=lambda line: print(line, file=sys.stderr))
    cohort.write_exclusions(excluded, excluded_path, overwrite=args.overwrite)
    if not records:
        return _error("features", f"no usable scan (reasons in {excluded_path})")
    cohort.write_feature_table(args.out, records, config.feature_names(), overwrite=args.overwrite)
    summary = {"cases": len(records), "excluded": len(excluded), "out": str(args.out)}
    summary |= {
        "excluded_csv": str(excluded_path),
        "encoder": records[0]["encoder"],
        "weights": records[0]["weights"],
    }
    print(json.dumps(summary))
    return 0


def _cli_train(args: argparse.Namespace) -> int:
    from TNMStagingLib.core import classifier
    from TNMStagingLib.training import cohort

    try:
        for path, what in ((args.out, "--out"), (args.cv_json, "--cv-json")):
            if path is not None:
                check_output_file(path, inputs=[args.features], overwrite=args.overwrite, what=what)
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
        training_data=args.description or cohort.describe_feature_table(table, args.features),
    )
    atomic_write(args.out, lambda temporary: classifier.save_model(temporary, model), overwrite=args.overwrite)
    if args.cv_json:
        write_text(args.cv_json, json.dumps(cv, indent=1), overwrite=args.overwrite)
    if table.encoder["weights"] == "random-init":
        print(f"note: {RANDOM_INIT_NOTE}", file=sys.stderr)
    print(
        f"\nsaved {args.out} ({len(fitted.selected_features_)} selected features, classes {list(fitted.classes_)})"
    )
    return 0


def _cli_evaluate(args: argparse.Namespace) -> int:
    from TNMStagingLib.core import classifier
    from TNMStagingLib.training import cohort

    try:
        model = classifier.load_model(args.model)
        table = cohort.read_feature_table(args.features)
        X = model_columns(model, table)
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


def _cli_predict(args: argparse.Namespace) -> int:
    from LiverTumorSegLib.models.registry import RegistryError
    from TNMStagingLib.core import classifier
    from TNMStagingLib.training import cohort

    try:
        model = classifier.load_model(args.model)
        ct = cohort.read_image(args.image)
        labels = cohort.read_image(args.labels)
        import SimpleITK as sitk

        check_scalar_3d(ct, f"--image {args.image}")
        check_finite(sitk.GetArrayViewFromImage(ct), f"--image {args.image}")
        check_labelmap(labels, f"--labels {args.labels}", reference=ct, reference_what=f"--image {args.image}")

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
