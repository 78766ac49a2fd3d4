"""``livertumor train``: one stage of the cascade with the thesis recipe (MONAI)."""

from __future__ import annotations

import json
from pathlib import Path

from LiverTumorSegLib.training.train import TrainConfig, train


def _triple(text: str, kind=float) -> tuple:
    values = tuple(kind(v) for v in text.split(","))
    if len(values) != 3:
        raise ValueError(f"expected three comma-separated values (x,y,z), got {text!r}")
    return values


def _run_cli(args) -> int:
    from LiverTumorSegLib.training.datasets import list_msd_cases, make_phantom_dataset, split_cases

    if args.lesion_balanced_crops and args.stage != "tumor":  # refused before any phantom is written
        raise SystemExit("--lesion-balanced-crops is for the tumor stage; the liver stage has --tumor-crop-fraction")
    if args.phantoms:
        data_root = make_phantom_dataset(args.out / "phantom_data", args.phantoms, first_seed=args.phantom_first_seed,
                                         size_xy=args.phantom_size)
        training_data = (f"{args.phantoms} synthetic CT phantoms (seeds {args.phantom_first_seed}.."
                         f"{args.phantom_first_seed + args.phantoms - 1}, {args.phantom_size}^2 in-plane)")
    else:
        data_root, training_data = args.data, f"MSD-layout data set {args.data}"
    liver_masks = _predicted_liver_masks(args, data_root) if args.liver_model else None
    train_cases, val_cases = split_cases(list_msd_cases(data_root, liver_masks), args.val_fraction, args.seed)
    config = TrainConfig(stage=args.stage, spacing_mm=args.spacing_mm, roi_size=args.roi, init_filters=args.init_filters,
                         max_epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
                         samples_per_volume=args.samples_per_volume, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, early_stopping_patience=args.patience, seed=args.seed,
                         liver_mask_jitter_voxels=args.liver_mask_jitter_voxels,
                         liver_mask_input="predicted" if liver_masks else "truth",
                         tumor_crop_fraction=args.tumor_crop_fraction, lesion_balanced_crops=args.lesion_balanced_crops,
                         model_id=args.model_id, title=args.title, demo_only=bool(args.phantoms) or args.demo_only,
                         training_data=training_data)
    device = args.device if args.device != "auto" else ("cuda" if _cuda_available() else "cpu")
    print(json.dumps({"stage": "setup", "train_cases": len(train_cases), "val_cases": len(val_cases),
                      "device": device}), flush=True)
    result = train(config, train_cases, val_cases, args.out / args.stage, device=device, resume=not args.no_resume,
                   init_weights=args.init_weights, log=lambda line: print(line, flush=True))
    print(json.dumps({"stage": "done", **result}), flush=True)
    return 0


def _predicted_liver_masks(args, data_root: Path) -> Path:
    """Write (or reuse) the liver masks that ``--liver-model`` predicts for the data set, under ``--out``."""
    from LiverTumorSegLib.models import registry as model_registry
    from LiverTumorSegLib.models.manifest import load_manifest
    from LiverTumorSegLib.models.networks import load_model
    from LiverTumorSegLib.training.datasets import write_predicted_liver_masks

    if args.stage != "tumor":
        raise SystemExit("--liver-model is for the tumor stage (its liver-mask input)")
    manifest = load_manifest()
    if args.liver_model not in manifest:
        raise SystemExit(f"unknown liver model {args.liver_model!r}; known: {', '.join(manifest)}")
    entry = manifest[args.liver_model]
    if entry.task != "liver":
        raise SystemExit(f"--liver-model {args.liver_model}: a {entry.task} model, not a liver model")
    try:
        model = load_model(entry, model_registry.resolve_model_file(entry, download=False))
    except model_registry.RegistryError as error:
        raise SystemExit(f"--liver-model {args.liver_model}: {error}") from error
    return write_predicted_liver_masks(data_root, model, out_root=args.out / "predicted_liver_masks",
                                       log=lambda line: print(line, flush=True))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train the liver or the tumor stage (thesis recipe)",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=["liver", "tumor"], required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="data set in MSD layout (imagesTr/, labelsTr/; labels 0/1/2)")
    source.add_argument("--phantoms", type=int, help="generate this many synthetic phantoms and train on them")
    parser.add_argument("--phantom-size", type=int, default=128, help="in-plane matrix of generated phantoms")
    parser.add_argument("--phantom-first-seed", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, metrics.csv)")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--iterations-per-epoch", type=int, default=None)
    parser.add_argument("--samples-per-volume", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--patience", type=int, default=30, help="early stopping patience (epochs)")
    parser.add_argument("--spacing-mm", type=_triple, default=(1.0, 1.0, 2.5), help="x,y,z (default 1,1,2.5)")
    parser.add_argument("--roi", type=lambda t: _triple(t, int), default=(128, 128, 48), help="patch x,y,z")
    parser.add_argument("--init-filters", type=int, default=16)
    parser.add_argument("--liver-mask-jitter-voxels", type=int, default=0,
                        help="tumor stage: randomly dilate/erode the liver-mask input by up to N voxels, so that "
                             "the model tolerates the liver model's predicted mask (default 0: the thesis recipe)")
    parser.add_argument("--tumor-crop-fraction", type=float, default=0.0,
                        help="liver stage: centre this share of the patches on tumor, so that the liver model learns "
                             "that tumors at its surface are liver (default 0: the thesis pos/neg sampling)")
    parser.add_argument("--lesion-balanced-crops", action="store_true",
                        help="tumor stage: give every lesion the same share of the tumor-centred patches (the thesis "
                             "centres them on tumor voxels drawn uniformly, so large tumors dominate)")
    parser.add_argument("--liver-model", default=None, metavar="MODEL_ID",
                        help="tumor stage: feed the liver masks this model predicts (as in the cascade) instead of "
                             "the truth; they are computed once and kept under --out/predicted_liver_masks")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--no-resume", action="store_true", help="start over even if last.pt exists")
    parser.add_argument("--init-weights", type=Path, default=None, metavar="CHECKPOINT",
                        help="fine-tune: a new run starts from the network weights of this checkpoint or model file "
                             "(same network), with a fresh learning rate schedule and best Dice")
    parser.add_argument("--model-id", default="")
    parser.add_argument("--title", default="")
    parser.add_argument("--demo-only", action="store_true", help="mark the model demo-only (implied by --phantoms)")
    parser.set_defaults(func=_run_cli)
