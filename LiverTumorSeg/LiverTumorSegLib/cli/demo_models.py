"""``livertumor demo-models``: train, evaluate and register the phantom-trained demo models."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from LiverTumorSegLib.models.manifest import load_manifest
from LiverTumorSegLib.resources import MANIFEST_FILE
from LiverTumorSegLib.training.demo_models import (
    HELD_OUT_FIRST_SEED,
    LIVER_FIRST_SEED,
    LIVER_RECIPE,
    TUMOR_FIRST_SEED,
    TUMOR_RECIPE,
    evaluate_held_out,
    export_stage,
    held_out_description,
    register_entries,
    train_stage,
    write_card,
)


def _run_cli(args: argparse.Namespace) -> int:
    from LiverTumorSegLib.models.networks import load_model
    from LiverTumorSegLib.training.datasets import make_phantom_dataset, write_predicted_liver_masks

    command = "livertumor demo-models " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    if args.tumor_crop_fraction and args.stages == "tumor":
        raise SystemExit("--tumor-crop-fraction is for the liver stage; --stages tumor does not train it")
    if args.lesion_balanced_crops and args.stages == "liver":
        raise SystemExit("--lesion-balanced-crops is for the tumor stage; --stages liver does not train it")
    if args.init_weights is not None and args.stages == "both":
        raise SystemExit("--init-weights fine-tunes one stage: give --stages liver or --stages tumor")
    if args.init_weights is not None and not args.init_weights.is_file():
        raise SystemExit(f"--init-weights {args.init_weights}: no such file")

    def log(line: str) -> None:
        print(line, flush=True)

    common = {"iterations": args.iterations, "val_interval": args.val_interval, "patience": args.patience,
              "plateau_patience": args.plateau_patience, "restart_learning_rate": args.restart_lr,
              "init_weights": args.init_weights, "seed": 0, "log": log}
    trained, entries = [], []
    if args.stages in ("both", "liver"):
        data_root = make_phantom_dataset(args.work / "phantoms", args.phantoms, first_seed=LIVER_FIRST_SEED,
                                         size_xy=args.size)
        recipe = dict(LIVER_RECIPE, tumor_crop_fraction=args.tumor_crop_fraction, **_rate(args))
        trained.append(train_stage(recipe, data_root, args.work, epochs=args.epochs, **common))
        entries.append(export_stage(trained[-1], "demo_liver_segresnet.md",
                                    _phantoms_text(args.phantoms, LIVER_FIRST_SEED, args.size)))
        liver_entry = entries[0]
    else:
        liver_entry = load_manifest(MANIFEST_FILE)[LIVER_RECIPE["model_id"]]  # the registered demo liver model
    if args.stages in ("both", "tumor"):
        # The tumor stage learns on the liver masks the liver model predicts for phantoms it was not trained on:
        # on its own training phantoms those masks would be better than anything it meets in use.
        tumor_root = make_phantom_dataset(args.work / "tumor_phantoms", args.tumor_phantoms,
                                          first_seed=TUMOR_FIRST_SEED, size_xy=args.size)
        masks = write_predicted_liver_masks(tumor_root, load_model(liver_entry, liver_entry.local_file()), log=log)
        recipe = dict(TUMOR_RECIPE, lesion_balanced_crops=args.lesion_balanced_crops, **_rate(args))
        trained.append(train_stage(recipe, tumor_root, args.work, epochs=args.tumor_epochs or args.epochs,
                                   liver_masks=masks, **common))
        entries.append(export_stage(trained[-1], "demo_tumor_segresnet.md",
                                    _phantoms_text(args.tumor_phantoms, TUMOR_FIRST_SEED, args.size)
                                    + f"; liver-mask input predicted by {liver_entry.id}"))
    tumor_entry = entries[-1] if args.stages != "liver" else None
    evaluated = evaluate_held_out(liver_entry, tumor_entry, args.work / "held_out", HELD_OUT_FIRST_SEED,
                                  args.held_out, args.size, log=log)
    held_out = held_out_description(evaluated, args.size)
    for entry, stage in zip(entries, trained, strict=True):
        write_card(entry, stage, evaluated, command, held_out)
    register_entries(entries)
    structures = ("liver",) if tumor_entry is None else ("liver", "tumor")
    print(json.dumps({s: evaluated["summary"][s] for s in structures}, default=float))
    return 0


def _rate(args: argparse.Namespace) -> dict:
    return {} if args.learning_rate is None else {"learning_rate": args.learning_rate}


def _phantoms_text(n_phantoms: int, first_seed: int, size_xy: int) -> str:
    return (f"{n_phantoms} synthetic CT phantoms, seeds {first_seed}..{first_seed + n_phantoms - 1}, "
            f"{size_xy}x{size_xy} in-plane (85 % training, 15 % validation, split with seed 0)")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1), got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0.0:
        raise argparse.ArgumentTypeError(f"expected a positive learning rate, got {text}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo-models", help="train, evaluate and register the phantom demo models",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="working folder (phantoms, checkpoints, reports)")
    parser.add_argument("--phantoms", type=int, default=40, help="liver stage: training + validation phantoms")
    parser.add_argument("--tumor-phantoms", type=int, default=60,
                        help="tumor stage: training + validation phantoms (other seeds than the liver stage's)")
    parser.add_argument("--held-out", type=int, default=6, help="held-out phantoms with tumors for the evaluation")
    parser.add_argument("--size", type=int, default=256, help="in-plane matrix of the phantoms")
    parser.add_argument("--epochs", type=int, default=60, help="maximum epochs (liver stage; tumor too unless given)")
    parser.add_argument("--tumor-epochs", type=int, default=None, help="maximum epochs of the tumor stage")
    parser.add_argument("--stages", choices=["both", "liver", "tumor"], default="both",
                        help="train and register both stages, the liver stage only, or the tumor stage only (on "
                             "the registered demo liver model's masks)")
    parser.add_argument("--iterations", type=int, default=17, help="iterations per epoch")
    parser.add_argument("--val-interval", type=int, default=4, help="epochs between validations")
    parser.add_argument("--patience", type=int, default=20, help="early stopping: epochs without a better Dice")
    parser.add_argument("--plateau-patience", type=int, default=1,
                        help="validations without a better Dice before the learning rate is halved")
    parser.add_argument("--tumor-crop-fraction", type=_fraction, default=0.0,
                        help="liver stage: centre this share of the patches on tumor, so that tumors at the liver's "
                             "surface are learnt as liver (default 0)")
    parser.add_argument("--lesion-balanced-crops", action="store_true",
                        help="tumor stage: give every lesion the same share of the tumor-centred patches, so that "
                             "small lesions are learnt as often as large tumors")
    parser.add_argument("--learning-rate", type=_positive, default=None, metavar="LR",
                        help="initial learning rate of a new run (default: the recipe's 1e-3); e.g. lower for "
                             "fine-tuning with --init-weights")
    parser.add_argument("--restart-lr", type=_positive, default=None, metavar="LR",
                        help="when a stage resumes an earlier run in --work, restart its learning rate at LR (warm "
                             "restart) and its plateau schedule")
    parser.add_argument("--init-weights", type=Path, default=None, metavar="CHECKPOINT",
                        help="with --stages liver or tumor: fine-tune, i.e. a new run in --work starts from the "
                             "network weights of this checkpoint or model file (the card records its SHA-256)")
    parser.set_defaults(func=_run_cli)
