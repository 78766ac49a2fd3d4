"""Training of the cascade's stages with the thesis recipe (MONAI).

Recipe (docs/definitions.md, segmentation recipe): RAS orientation, resampling to the model's spacing (thesis 1.0 x 1.0 x 2.5 mm),
HU clipped to [-100, 200] and scaled to [0, 1], ``RandCropByPosNegLabeld`` patches (thesis 128 x 128 x 48),
flips / 90-degree rotations / zoom / intensity scale and shift / Gaussian noise / contrast augmentation,
DiceFocal loss with background weight 1/10, Adam (lr 1e-4, weight decay 1e-5), ReduceLROnPlateau on the
validation Dice, early stopping, sliding-window validation (overlap 0.4).

Stage ``liver``: input CT, target liver (labels 1 and 2). Stage ``tumor``: inputs CT and the liver mask as a
second channel, cropped to the liver plus a margin, target tumor (label 2).

Checkpoints (``last.pt``, ``best.pt``) hold the weights, optimizer and scheduler state, the epoch, the
history and the model's manifest entry, so that training resumes and a trained file describes itself.
"""

from __future__ import annotations

import csv
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from LiverTumorSegLib.core.cancel import Cancelled
from LiverTumorSegLib.core.cascade import MIN_TUMOR_ML, clean_liver_mask, keep_tumors_in_liver
from LiverTumorSegLib.core.preprocessing import dictionary_transforms
from LiverTumorSegLib.io.atomic import atomic_write
from LiverTumorSegLib.models.manifest import ModelEntry

THESIS_NETWORK_ARGS = {"spatial_dims": 3, "init_filters": 16, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1],
                       "out_channels": 2}


@dataclass
class TrainConfig:
    """What to train and how. Sizes are (x, y, z) voxels at ``spacing_mm`` (x, y, z)."""

    stage: str = "liver"
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 2.5)
    roi_size: tuple[int, int, int] = (128, 128, 48)
    init_filters: int = 16
    hu_min: float = -100.0
    hu_max: float = 200.0
    max_epochs: int = 300
    iterations_per_epoch: int | None = None
    samples_per_volume: int = 2
    batch_size: int = 2
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5
    background_weight: float = 0.1
    val_interval: int = 1
    early_stopping_patience: int = 30  # epochs without a better validation Dice
    plateau_patience: int = 10  # validations without a better Dice before the learning rate is halved
    sw_overlap: float = 0.4
    crop_margin_mm: float = 10.0
    liver_mask_jitter_voxels: int = 0  # tumor stage: random dilation/erosion of the liver-mask channel
    liver_mask_input: str = "truth"  # tumor stage: "truth" (labels > 0) or "predicted" (each case's "liver_mask")
    tumor_crop_fraction: float = 0.0  # liver stage: share of patches centred on tumor (0: thesis pos/neg 1:1)
    lesion_balanced_crops: bool = False  # tumor stage: every lesion gets the same share of the tumor patches
    val_min_tumor_ml: float = MIN_TUMOR_ML  # tumor validation applies the cascade's rules, as run_cascade
    seed: int = 0
    num_workers: int = 0
    model_id: str = ""
    title: str = ""
    demo_only: bool = False
    training_data: str = ""
    extra_entry: dict[str, Any] = field(default_factory=dict)

    def manifest_entry(self, file_name: str) -> ModelEntry:
        """The manifest entry describing the model this configuration trains (checksum filled at export)."""
        args = dict(THESIS_NETWORK_ARGS, init_filters=self.init_filters,
                    in_channels=1 if self.stage == "liver" else 2)
        return ModelEntry.from_dict({
            "id": self.model_id or f"{self.stage}-segresnet",
            "title": self.title or f"{self.stage.capitalize()} SegResNet",
            "task": self.stage,
            "labels": {self.stage: 1},
            "network": {"class": "monai.networks.nets.SegResNet", "args": args},
            "input_channels": ["ct"] if self.stage == "liver" else ["ct", "liver_mask"],
            "orientation": "RAS",
            "spacing_mm": list(self.spacing_mm),
            "intensity": {"type": "clip_scale", "hu_min": self.hu_min, "hu_max": self.hu_max,
                          "out_min": 0.0, "out_max": 1.0},
            "roi_size": list(self.roi_size),
            "sw_overlap": self.sw_overlap,
            "file_name": file_name,
            "local_path": file_name,
            "sha256": "0" * 64,  # placeholder until export_weights computes the real digest
            "checkpoint_format": "state_dict",
            "license": "Apache-2.0",
            "training_data": self.training_data or "unspecified",
            "demo_only": self.demo_only,
            **self.extra_entry,
        })


LIVER_MASK_INPUTS = ("truth", "predicted")
MODEL_FILE_NAME = "model.pt"  # name of an exported model file (export_weights)


def _deterministic_transforms(config: TrainConfig) -> list:
    from monai import transforms as mt

    if config.liver_mask_input not in LIVER_MASK_INPUTS:
        raise ValueError(f"liver_mask_input must be one of {LIVER_MASK_INPUTS}, got {config.liver_mask_input!r}")
    keys = ["image", "label"]
    predicted = config.stage == "tumor" and config.liver_mask_input == "predicted"
    loaded = keys + (["liver_mask"] if predicted else [])
    # orientation, spacing and intensity exactly as the cascade will preprocess for this model (one entry)
    steps = [
        mt.LoadImaged(keys=loaded, reader="NibabelReader", image_only=True),
        mt.EnsureChannelFirstd(keys=loaded),
        *dictionary_transforms(config.manifest_entry(MODEL_FILE_NAME), image_key="image", mask_keys=loaded[1:]),
    ]
    if config.stage == "liver":
        if _samples_tumors(config):  # the 0/1/2 labels choose the patch centres, then go
            steps.append(mt.CopyItemsd(keys="label", names="classes"))
            keys = keys + ["classes"]
        steps.append(mt.Lambdad(keys="label", func=lambda label: (label > 0).float()))
    else:
        # The crop and the second channel come from the liver mask the tumor model will see: the truth, or
        # (cascade-consistent) the liver model's prediction, as at inference (cascade.liver_crop_region).
        margin = [max(1, round(config.crop_margin_mm / s)) for s in config.spacing_mm]
        if not predicted:  # a case's predicted-mask path, if it has one, is not used
            steps += [mt.DeleteItemsd(keys="liver_mask"), mt.CopyItemsd(keys="label", names="liver_mask")]
        steps += [
            mt.Lambdad(keys="liver_mask", func=lambda mask: (mask > 0).float()),
            mt.CropForegroundd(keys=["image", "label", "liver_mask"], source_key="liver_mask", margin=margin,
                               allow_smaller=True),
            mt.ConcatItemsd(keys=["image", "liver_mask"], name="image"),
            mt.DeleteItemsd(keys="liver_mask"),
            mt.Lambdad(keys="label", func=lambda label: (label == 2).float()),
        ]
    steps.append(mt.SpatialPadd(keys=keys, spatial_size=config.roi_size))
    return steps


def build_transforms(config: TrainConfig, training: bool):
    """MONAI dictionary transforms for training (with augmentation) or validation."""
    from monai import transforms as mt

    keys = ["image", "label"]
    steps = _deterministic_transforms(config)
    if training:
        if _balances_lesions(config):  # deterministic, so CacheDataset keeps it with the loaded case
            from LiverTumorSegLib.training.transforms import LesionBalancedCentresd

            steps.append(LesionBalancedCentresd(indices_key="centre_indices"))
        steps.append(_patch_sampler(config, keys))
        steps += [
            mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
            mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
            mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
            mt.RandRotate90d(keys=keys, prob=0.3, max_k=3, spatial_axes=(0, 1)),
            mt.RandZoomd(keys=keys, prob=0.2, min_zoom=0.9, max_zoom=1.1, mode=("trilinear", "nearest"),
                         keep_size=True),
            mt.RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            mt.RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            mt.RandGaussianNoised(keys="image", prob=0.2, std=0.01),
            mt.RandAdjustContrastd(keys="image", prob=0.2, gamma=(0.8, 1.2)),
        ]
        if config.stage == "tumor" and config.liver_mask_jitter_voxels > 0:
            from LiverTumorSegLib.training.transforms import RandChannelMorphologyd

            steps.append(RandChannelMorphologyd("image", channel=1, max_voxels=config.liver_mask_jitter_voxels))
    if _samples_tumors(config):
        steps.append(mt.DeleteItemsd(keys="classes"))  # it only chose the patch centres
    if training and _balances_lesions(config):
        steps.append(mt.DeleteItemsd(keys="centre_indices"))
    steps.append(mt.EnsureTyped(keys=keys, track_meta=False))
    return mt.Compose(steps)


def _samples_tumors(config: TrainConfig) -> bool:
    if not 0.0 <= config.tumor_crop_fraction < 1.0:
        raise ValueError(f"tumor_crop_fraction must be in [0, 1), got {config.tumor_crop_fraction}")
    return config.stage == "liver" and config.tumor_crop_fraction > 0


def _balances_lesions(config: TrainConfig) -> bool:
    if config.lesion_balanced_crops and config.stage != "tumor":
        raise ValueError("lesion_balanced_crops is for the tumor stage (the liver stage has tumor_crop_fraction)")
    return config.lesion_balanced_crops


def _patch_sampler(config: TrainConfig, keys: list[str]):
    """Training patches: thesis pos/neg 1:1 around the target (for the tumor stage with
    ``lesion_balanced_crops`` the positive centres split evenly between lesions), or for the liver stage with
    ``tumor_crop_fraction`` centred on tumor that often (the rest split evenly between liver and background).

    Tumors at the liver's surface look like the tissue outside it; a liver model that rarely sees them leaves
    them out, and the cascade cannot find them then (``demo_models.tumor_reach``).
    """
    from monai import transforms as mt

    if _balances_lesions(config):  # pos/neg 1:1 as the thesis, the positive centres spread evenly over lesions
        return mt.RandCropByLabelClassesd(keys=keys, label_key="label", spatial_size=config.roi_size, ratios=[1, 1],
                                          num_classes=2, num_samples=config.samples_per_volume,
                                          indices_key="centre_indices", warn=False)
    if not _samples_tumors(config):
        return mt.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=config.roi_size, pos=1, neg=1,
                                         num_samples=config.samples_per_volume, image_key="image",
                                         image_threshold=0.0)
    rest = (1.0 - config.tumor_crop_fraction) / 2
    return mt.RandCropByLabelClassesd(keys=keys + ["classes"], label_key="classes", spatial_size=config.roi_size,
                                      ratios=[rest, rest, config.tumor_crop_fraction], num_classes=3,
                                      num_samples=config.samples_per_volume, warn=False)


def build_network(config: TrainConfig):
    from monai.networks.nets import SegResNet

    args = dict(THESIS_NETWORK_ARGS, init_filters=config.init_filters, in_channels=1 if config.stage == "liver" else 2)
    return SegResNet(**args)


class TrainingCancelled(Cancelled):
    """Raised when the cancel event is set; ``last.pt`` holds the last finished epoch."""


def train(config: TrainConfig, train_cases: list[dict], val_cases: list[dict], out_dir: str | Path, *,
          device: str = "cpu", resume: bool = True, restart_learning_rate: float | None = None,
          init_weights: str | Path | None = None, log: Callable[[str], None] = print,
          cancel: threading.Event | None = None) -> dict:
    """Train one stage; returns ``{"best_dice", "best_epoch", "epochs_run", "checkpoint", "resumed_after_epoch",
    "learning_rate_restarted", "initialised_from"}``.

    ``train_cases``/``val_cases`` are ``[{"image": path, "label": path}]`` (NIfTI). Metrics go to
    ``metrics.csv`` (and TensorBoard when it is installed) in ``out_dir``. ``restart_learning_rate``: when
    the run resumes, set the learning rate to this value and start the plateau schedule afresh (a warm
    restart, for a run whose rate the plateau schedule had already cut several times). ``init_weights``: a
    new run (nothing to resume in ``out_dir``) starts from the network weights of this checkpoint or exported
    model file, with a fresh optimizer, schedule and best Dice (fine-tuning, e.g. on another liver model's
    masks); the network must match ``config`` exactly.
    """
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceFocalLoss
    from monai.utils import set_determinism

    from LiverTumorSegLib.models.networks import load_weights

    if config.stage == "tumor" and config.liver_mask_input == "predicted":
        missing = [case.get("case", case["image"]) for case in train_cases + val_cases if "liver_mask" not in case]
        if missing:
            raise ValueError(f"liver_mask_input='predicted' needs a 'liver_mask' file for every case; missing for "
                             f"{missing[:5]} (datasets.write_predicted_liver_masks writes them)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_determinism(seed=config.seed)
    model = build_network(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                           patience=config.plateau_patience)
    loss_function = DiceFocalLoss(to_onehot_y=True, softmax=True, weight=[config.background_weight, 1.0])
    state = _resume_state(out_dir / "last.pt", model, optimizer, scheduler) if resume else None
    scheduler.patience = config.plateau_patience  # the configuration wins over a resumed schedule
    start_epoch = state["epoch"] + 1 if state else 0
    best = {"dice": state["best_dice"], "epoch": state["best_epoch"]} if state else {"dice": -1.0, "epoch": -1}
    history: list[dict] = state["history"] if state else []
    resumed = {"resumed_after_epoch": state["epoch"] if state else None, "learning_rate_restarted": False,
               "initialised_from": None}
    if restart_learning_rate is not None and not state:
        log("no earlier run to resume: the learning rate restart does not apply")
    if init_weights is not None and state:
        log(f"resuming the run in {out_dir}: the initial weights {init_weights} do not apply")
    elif init_weights is not None:
        load_weights(model, init_weights)  # NetworkError names the file when it does not fit
        resumed["initialised_from"] = str(init_weights)
        log(f"new run starting from the weights in {init_weights}")
    if state:
        log(f"resuming after epoch {state['epoch']} (best Dice {best['dice']:.4f} at epoch {best['epoch']})")
        if start_epoch >= config.max_epochs or state["epoch"] - best["epoch"] >= config.early_stopping_patience:
            log("nothing left to train: the resumed run had finished")
            return {"best_dice": best["dice"], "best_epoch": best["epoch"], "epochs_run": start_epoch,
                    "checkpoint": str(out_dir / "best.pt"), **resumed}
        if restart_learning_rate is not None:
            _restart_schedule(optimizer, scheduler, restart_learning_rate)
            resumed["learning_rate_restarted"] = True
            log(f"learning rate restarted at {restart_learning_rate:g}")

    # CacheDataset keeps the deterministic part (load, orient, resample, crop) in memory: only the random
    # augmentation runs per iteration.
    train_loader = DataLoader(CacheDataset(train_cases, build_transforms(config, training=True), progress=False),
                              batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers)
    val_data = CacheDataset(val_cases, build_transforms(config, training=False), progress=False)
    writer = _tensorboard_writer(out_dir)
    entry = config.manifest_entry("best.pt").to_dict()
    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.max_epochs):
        started = time.perf_counter()
        train_loss = _train_one_epoch(model, train_loader, optimizer, loss_function, device, config, cancel)
        row = {"epoch": epoch, "train_loss": train_loss, "lr": optimizer.param_groups[0]["lr"]}
        if epoch % config.val_interval == 0 or epoch == config.max_epochs - 1:
            row["val_dice"] = validate(model, val_data, config, device)
            scheduler.step(row["val_dice"])
            if row["val_dice"] > best["dice"]:
                best = {"dice": row["val_dice"], "epoch": epoch}
                _save(out_dir / "best.pt", model, optimizer, scheduler, epoch, best, history + [row], entry)
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        _log_row(out_dir / "metrics.csv", row, writer)
        _save(out_dir / "last.pt", model, optimizer, scheduler, epoch, best, history, entry)
        log(json.dumps({"stage": "train", "epoch": epoch, **{k: round(v, 5) for k, v in row.items() if k != "epoch"}}))
        if epoch - best["epoch"] >= config.early_stopping_patience:
            log(f"early stopping: no better validation Dice for {config.early_stopping_patience} epochs")
            break
    if writer is not None:
        writer.close()
    return {"best_dice": best["dice"], "best_epoch": best["epoch"], "epochs_run": epoch + 1,
            "checkpoint": str(out_dir / "best.pt"), **resumed}


def _restart_schedule(optimizer, scheduler, learning_rate: float) -> None:
    """Set the learning rate and forget the plateau count (the best Dice so far is kept)."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
    scheduler.num_bad_epochs = 0
    scheduler.cooldown_counter = 0
    scheduler._last_lr = [learning_rate] * len(optimizer.param_groups)


def _train_one_epoch(model, loader, optimizer, loss_function, device, config, cancel) -> float:
    model.train()
    losses = []
    for step, batch in enumerate(loader):
        if cancel is not None and cancel.is_set():
            raise TrainingCancelled("training cancelled; last.pt holds the last finished epoch")
        if config.iterations_per_epoch is not None and step >= config.iterations_per_epoch:
            break
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(model(batch["image"].to(device)), batch["label"].to(device))
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
    return sum(losses) / max(1, len(losses))


def validate(model, val_data, config: TrainConfig, device: str) -> float:
    """Mean foreground Dice over the validation cases (sliding window, Gaussian blending).

    Each stage is scored as the cascade delivers it: the liver after ``cascade_liver_rules``, the tumor after
    ``cascade_tumor_rules``. A tumor-free case scores 1 without a false positive and 0 with one, so without the
    cascade's minimum lesion volume a few stray voxels that the cascade would drop decide which checkpoint is kept.
    """
    import torch
    from monai.inferers import sliding_window_inference
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)
    model.eval()
    with torch.inference_mode():
        for item in val_data:
            image, label = item["image"][None].to(device), item["label"][None].to(device)
            logits = sliding_window_inference(image, config.roi_size, 1, model, overlap=config.sw_overlap,
                                              mode="gaussian")
            predicted = logits.argmax(dim=1, keepdim=True)
            if config.stage == "tumor":
                predicted = cascade_tumor_rules(predicted, image[:, 1:2] > 0.5, config)
            else:
                predicted = cascade_liver_rules(predicted, config)
            prediction = one_hot(predicted, num_classes=2)
            metric(prediction, one_hot(label.long(), num_classes=2))
    value = float(metric.aggregate().item())
    return 0.0 if math.isnan(value) else value


def cascade_liver_rules(predicted, config: TrainConfig):
    """``cascade.clean_liver_mask`` (largest component, holes filled in 3D and per axial slice) on a model-space
    prediction: a (1, 1, x, y, z) 0/1 tensor at ``config.spacing_mm``; returns a tensor like ``predicted``."""
    cleaned = clean_liver_mask(_model_space_image(predicted > 0, config.spacing_mm))
    return _model_space_tensor(cleaned, like=predicted)


def cascade_tumor_rules(predicted, liver_mask, config: TrainConfig):
    """``cascade.keep_tumors_in_liver`` on a model-space prediction: (1, 1, x, y, z) 0/1 tensors at
    ``config.spacing_mm``, minimum lesion ``config.val_min_tumor_ml``; returns a tensor like ``predicted``."""
    kept = keep_tumors_in_liver(_model_space_image(predicted > 0, config.spacing_mm),
                                _model_space_image(liver_mask, config.spacing_mm), config.val_min_tumor_ml)
    return _model_space_tensor(kept, like=predicted)


def _model_space_image(tensor, spacing_mm):
    """(1, 1, x, y, z) tensor -> uint8 image with the same x, y, z axes and spacing. The direction stays the
    identity: the rules need only the axes (z is axial) and the voxel size, not the position in the patient."""
    import numpy as np
    import SimpleITK as sitk

    result = sitk.GetImageFromArray(tensor[0, 0].cpu().numpy().astype(np.uint8).transpose(2, 1, 0))
    result.SetSpacing([float(s) for s in spacing_mm])
    return result


def _model_space_tensor(image, like):
    """The inverse of ``_model_space_image``: a (1, 1, x, y, z) tensor with ``like``'s dtype and device."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    array = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    return torch.from_numpy(array).to(device=like.device, dtype=like.dtype)[None, None]


def _save(path: Path, model, optimizer, scheduler, epoch, best, history, entry) -> None:
    import torch

    state = {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": epoch, "best_dice": best["dice"],
             "best_epoch": best["epoch"], "history": history, "manifest_entry": entry}
    atomic_write(path, lambda temporary: torch.save(state, temporary), overwrite=True)


def _resume_state(path: Path, model, optimizer, scheduler) -> dict | None:
    import torch

    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state


def _tensorboard_writer(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


def _log_row(csv_path: Path, row: dict, writer) -> None:
    fields = ["epoch", "train_loss", "val_dice", "lr", "seconds"]
    new_file = not csv_path.is_file()
    with csv_path.open("a", newline="") as handle:
        csv_writer = csv.DictWriter(handle, fieldnames=fields)
        if new_file:
            csv_writer.writeheader()
        csv_writer.writerow({key: row.get(key, "") for key in fields})
    if writer is not None:
        for key in ("train_loss", "val_dice", "lr"):
            if key in row:
                writer.add_scalar(key, row[key], row["epoch"])


def export_weights(checkpoint: str | Path, out_path: str | Path, **entry_overrides) -> dict:
    """Write the weights-only model file with its manifest entry; returns the entry with size and SHA-256."""
    import hashlib

    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    out_path = Path(out_path)
    entry = dict(state["manifest_entry"], file_name=out_path.name, local_path=out_path.name, **entry_overrides)
    entry.pop("sha256", None)
    entry.pop("size_bytes", None)
    weights = {"state_dict": state["state_dict"], "manifest_entry": entry}
    atomic_write(out_path, lambda temporary: torch.save(weights, temporary), overwrite=True)
    entry["size_bytes"] = out_path.stat().st_size
    entry["sha256"] = hashlib.sha256(out_path.read_bytes()).hexdigest()
    return entry
