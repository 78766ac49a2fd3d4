"""``livertumor demo-models``: train, export, evaluate and register the phantom-trained demo models.

The demo models let the whole pipeline run where no real weights can be downloaded (CI, offline
machines, first contact). They are trained by ``training.train`` (the thesis recipe) on synthetic CT
phantoms with fixed seeds; the tumor stage learns on the liver masks that the demo liver model predicts
for those phantoms, the input the cascade gives it. They are exported next to the manifest
(``Resources/Models/demo/``), evaluated by the cascade on held-out phantoms with ``evaluation``, and
described by a model card. They are demo-only: trained on phantoms, never for clinical images.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.io.atomic import write_image, write_text
from LiverTumorSegLib.models.manifest import ModelEntry
from LiverTumorSegLib.resources import MANIFEST_FILE

DEMO_DIR = MANIFEST_FILE.parent / "demo"
LIVER_FIRST_SEED = 1000  # the liver stage's training phantoms
TUMOR_FIRST_SEED = 2000  # the tumor stage's: phantoms the liver model never saw, so its masks carry real errors
HELD_OUT_FIRST_SEED = 5000  # held-out phantoms for the evaluation

# The committed demo models (see their model cards for the measured figures).
LIVER_RECIPE = {"stage": "liver", "spacing_mm": (3.0, 3.0, 3.0), "roi_size": (64, 64, 48), "init_filters": 8,
                "sw_overlap": 0.25, "learning_rate": 1e-3, "model_id": "demo-liver-segresnet",
                "title": "Demo liver SegResNet (3 mm, phantom-trained)"}
TUMOR_RECIPE = {"stage": "tumor", "spacing_mm": (1.5, 1.5, 2.5), "roi_size": (64, 64, 32), "init_filters": 8,
                "sw_overlap": 0.25, "learning_rate": 1e-3, "liver_mask_jitter_voxels": 0,
                "model_id": "demo-tumor-segresnet",
                "title": "Demo liver-tumor SegResNet (1.5 mm, phantom-trained)"}


def train_stage(recipe: dict, data_root: Path, out_dir: Path, *, epochs: int, iterations: int, val_interval: int,
                patience: int, seed: int, plateau_patience: int = 1, liver_masks: Path | None = None,
                restart_learning_rate: float | None = None, init_weights: Path | None = None, log=print) -> dict:
    """Train one stage of ``recipe`` on ``data_root``; ``liver_masks``: predicted liver masks for the tumor stage;
    ``restart_learning_rate``: a warm restart when an earlier run in ``out_dir`` is resumed; ``init_weights``:
    a new run starts from these weights (fine-tuning)."""
    from LiverTumorSegLib.training.datasets import list_msd_cases, split_cases
    from LiverTumorSegLib.training.train import TrainConfig, train

    train_cases, val_cases = split_cases(list_msd_cases(data_root, liver_masks), 0.15, seed)
    if liver_masks is not None:
        recipe = dict(recipe, liver_mask_input="predicted")
    config = TrainConfig(**recipe, max_epochs=epochs, iterations_per_epoch=iterations, samples_per_volume=2,
                         batch_size=2, val_interval=val_interval, early_stopping_patience=patience,
                         plateau_patience=plateau_patience, seed=seed,
                         demo_only=True,
                         training_data=f"{len(train_cases)} synthetic CT phantoms (validation {len(val_cases)}), "
                                       f"{data_root.name}")
    log(f"training {recipe['stage']}: {len(train_cases)} train / {len(val_cases)} validation phantoms")
    result = train(config, train_cases, val_cases, out_dir / recipe["stage"],
                   restart_learning_rate=restart_learning_rate, init_weights=init_weights, log=log)
    return {"result": result, "config": config, "train_cases": len(train_cases), "val_cases": len(val_cases),
            "restart_learning_rate": restart_learning_rate}


def export_stage(trained: dict, card_name: str, training_data: str) -> ModelEntry:
    from LiverTumorSegLib.training.train import export_weights

    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    model_id = trained["config"].model_id
    file_name = f"{model_id.replace('-', '_')}.pt"
    entry = export_weights(trained["result"]["checkpoint"], DEMO_DIR / file_name,
                           card=f"demo/{card_name}", training_data=training_data)
    entry["local_path"] = f"demo/{file_name}"
    return ModelEntry.from_dict(entry, manifest_dir=MANIFEST_FILE.parent)


def evaluate_held_out(liver: ModelEntry, tumor: ModelEntry | None, out_dir: Path, first_seed: int, n_cases: int,
                      size_xy: int, log=print) -> dict:
    """Run the cascade on held-out phantoms and evaluate against their truth.

    The evaluated cases are the first ``n_cases`` phantoms from ``first_seed`` on that have tumors (a tumor
    DSC is undefined without one); the tumor-free phantoms passed over on the way are run too and their
    false-positive tumor volume is reported. Without a tumor model only the liver stage runs.
    """
    from LiverTumorSegLib.core.cascade import run_cascade
    from LiverTumorSegLib.models.networks import load_model
    from LiverTumorSegLib.synthetic.phantom import make_phantom
    from LiverTumorSegLib.training import evaluation

    liver_model = load_model(liver, liver.local_file())
    tumor_model = None if tumor is None else load_model(tumor, tumor.local_file())
    predicted, truth = out_dir / "predicted", out_dir / "truth"
    predicted.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    seconds, seeds, tumor_free, reach = [], [], [], []
    seed = first_seed
    while len(seeds) < n_cases:
        if seed - first_seed >= 10 * n_cases:
            raise RuntimeError(f"only {len(seeds)} of phantoms {first_seed}..{seed - 1} have tumors; "
                               f"{n_cases} were asked for")
        phantom = make_phantom(seed, size_xy=size_xy)
        started = time.perf_counter()
        result = run_cascade(phantom.ct, liver_model, tumor_model, device="cpu")
        seconds.append(time.perf_counter() - started)
        if phantom.tumors:
            seeds.append(seed)
            reach.append({"seed": seed, **tumor_reach(result.labels, phantom.labels)})
            write_image(result.labels, predicted / f"phantom_{seed}.nrrd", overwrite=True)
            write_image(phantom.labels, truth / f"phantom_{seed}.nrrd", overwrite=True)
        else:
            tumor_free.append({"seed": seed, "false_positive_tumor_ml": round(result.tumor_volume_ml, 2)})
        log(f"held-out phantom {seed} ({len(phantom.tumors)} tumors): {seconds[-1]:.1f} s")
        seed += 1
    metrics, summary = evaluation.evaluate_folders(predicted, truth)
    evaluation.write_reports(metrics, summary, out_dir / "report")
    return {"summary": summary, "per_case": [asdict(m) for m in metrics], "seconds_per_case": seconds,
            "seeds": seeds, "tumor_free": tumor_free, "tumor_reach": reach, "tumor_evaluated": tumor is not None,
            "markdown": evaluation.markdown_table(summary if tumor is not None else {"liver": summary["liver"]})}


def tumor_reach(predicted: sitk.Image, truth: sitk.Image) -> dict:
    """How much of the true tumor the liver stage hands the tumor stage, and the best tumor DSC that allows.

    The cascade keeps tumors inside the predicted liver (``predicted`` labels > 0); a true tumor voxel outside
    it is lost whatever the tumor model does. ``fraction``: share of the true tumor (``truth`` == 2) inside;
    ``max_dsc``: the tumor DSC of a perfect tumor model under that rule, 2 * inside / (inside + true).
    """
    true_tumor = sitk.GetArrayViewFromImage(truth) == 2
    inside = int(np.count_nonzero(true_tumor & (sitk.GetArrayViewFromImage(predicted) > 0)))
    total = int(np.count_nonzero(true_tumor))
    return {"fraction": round(inside / total, 4) if total else 1.0,
            "max_dsc": round(2 * inside / (inside + total), 4) if total else 1.0}


def register_entries(entries: list[ModelEntry]) -> None:
    """Add or replace the demo entries in the manifest (other entries untouched)."""
    document = json.loads(MANIFEST_FILE.read_text(encoding="utf-8"))
    new_ids = {entry.id for entry in entries}
    document["models"] = [m for m in document["models"] if m["id"] not in new_ids] + [e.to_dict() for e in entries]
    write_text(MANIFEST_FILE, compact_json(document) + "\n", overwrite=True)


def compact_json(value, level: int = 0) -> str:
    """JSON with two-space indents and every list of plain values on one line (as the manifest is written)."""
    pad = "  " * level
    if isinstance(value, dict) and value:
        items = [f"{pad}  {json.dumps(key)}: {compact_json(item, level + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        items = [f"{pad}  {compact_json(item, level + 1)}" for item in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value, separators=(", ", ": "))


def held_out_description(evaluated: dict, size_xy: int) -> str:
    seeds = ", ".join(str(s) for s in evaluated["seeds"])
    text = (f"{len(evaluated['seeds'])} phantoms with tumors, seeds {seeds} (not used in training), {size_xy}x{size_xy} "
            f"in-plane, evaluated on their own voxel grid with `livertumor evaluate`'s metrics.")
    reach = ", ".join(f"{c['seed']}: {c['fraction']:.2f} (max DSC {c['max_dsc']:.2f})" for c in evaluated["tumor_reach"])
    text += (f" Share of the true tumor inside the predicted liver, the most the tumor stage can find (tumors are "
             f"kept inside the liver): {reach}.")
    if evaluated["tumor_free"] and evaluated["tumor_evaluated"]:
        false_positives = ", ".join(f"seed {c['seed']}: {c['false_positive_tumor_ml']} mL"
                                    for c in evaluated["tumor_free"])
        text += (f" Tumor-free phantoms passed over on the way (a tumor DSC is undefined there) were segmented too; "
                 f"false-positive tumor volume: {false_positives}.")
    return text


def per_case_table(per_case: list[dict], structures: tuple[str, ...] = ("liver", "tumor")) -> str:
    """Markdown: one row per held-out case with each structure's DSC and volumes (truth / predicted)."""
    rows = {}
    for m in per_case:
        rows.setdefault(m["case"], {})[m["structure"]] = m
    lines = ["| case | " + " | ".join(f"{s} DSC" for s in structures) + " | "
             + " | ".join(f"{s} mL (truth / predicted)" for s in structures) + " |",
             "|---|" + "---|" * (2 * len(structures))]
    for case, by_structure in rows.items():
        row = [by_structure[s] for s in structures]
        lines.append(f"| {case} | " + " | ".join(f"{m['dsc']:.3f}" for m in row) + " | "
                     + " | ".join(f"{m['truth_ml']:.1f} / {m['predicted_ml']:.1f}" for m in row) + " |")
    return "\n".join(lines)


def _sampling_text(config) -> str:
    """How the stage's patches were centred (for the model card)."""
    if config.lesion_balanced_crops:
        return "patches centred on tumor or background, 1:1, the tumor centres split evenly between lesions"
    if config.tumor_crop_fraction:
        return (f"patches centred on tumor {config.tumor_crop_fraction:.0%} of the time, the rest split between "
                f"liver and background")
    return f"patches centred on {config.stage} or background, 1:1"


def _mask_input_text(config) -> str:
    """How the tumor stage's liver-mask channel was made in training (for the model card)."""
    text = ("liver-mask input: the demo liver model's prediction on each training phantom, as the cascade "
            "feeds it (cascade-consistent)" if config.liver_mask_input == "predicted"
            else "liver-mask input: the truth liver")
    if config.liver_mask_jitter_voxels:
        text += f", randomly dilated or eroded by up to {config.liver_mask_jitter_voxels} voxels"
    return text


def _resume_lines(trained: dict) -> list[str]:
    """A card line when the run continued an earlier one in the same working folder (``train`` resumes), or
    started from another model's weights."""
    after = trained["result"].get("resumed_after_epoch")
    initialised_from = trained["result"].get("initialised_from")
    if initialised_from:
        path = Path(initialised_from)
        return [f"- Fine-tuned: epoch 0 started from the network weights in `{path.name}` (SHA-256 "
                f"`{hashlib.sha256(path.read_bytes()).hexdigest()}`), with a fresh learning rate schedule and best Dice."]
    if after is None:
        return []
    restart = trained.get("restart_learning_rate") if trained["result"].get("learning_rate_restarted") else None
    return [f"- Resumed after epoch {after} from `last.pt` of an earlier run of this command in the same working "
            f"folder (epochs up to {after} ran with that run's options; `metrics.csv` there has the learning rate of "
            f"every epoch)"
            + (f"; learning rate restarted at {restart:g}." if restart is not None else ".")]


def write_card(entry: ModelEntry, trained: dict, evaluation_result: dict, command: str, held_out: str) -> Path:
    result, config = trained["result"], trained["config"]
    structure = "liver" if config.stage == "liver" else "tumor"
    s = evaluation_result["summary"][structure]
    tumor_evaluated = evaluation_result["tumor_evaluated"]
    lines = [
        f"# {entry.title}", "",
        "**Demo only.** Trained on synthetic CT phantoms generated by this project; it has never seen a patient "
        "and must not be used on clinical images. It exists so that the pipeline runs end to end offline.", "",
        "## How it was made", "", f"```\n{command}\n```", "",
        f"- Data: {entry.training_data}; phantoms from `LiverTumorSegLib.synthetic.phantom.make_phantom`, seeds fixed.",
        f"- Network: MONAI SegResNet {dict(entry.network['args'])}; inputs {list(entry.input_channels)}.",
        f"- Preprocessing: RAS, spacing {list(entry.spacing_mm)} mm, HU clipped to "
        f"[{entry.intensity['hu_min']}, {entry.intensity['hu_max']}] and scaled to [0, 1]; patches "
        f"{list(entry.roi_size)} voxels.",
        f"- Training: thesis recipe (`LiverTumorSegLib.training.train`), {result['epochs_run']} epochs of "
        f"{config.iterations_per_epoch} iterations, batch {config.batch_size}, Adam lr {config.learning_rate:g} (the "
        f"thesis uses 1e-4; the phantoms allow a faster schedule) halved after {config.plateau_patience} "
        f"validation(s) without a better Dice, seed {config.seed}; "
        f"best validation Dice {result['best_dice']:.3f} at epoch {result['best_epoch']}"
        + "; " + _sampling_text(config) + ("." if config.stage == "liver" else "; " + _mask_input_text(config) + "."),
        *_resume_lines(trained),
        f"- File: `{entry.local_path}`, {entry.size_bytes} bytes, SHA-256 `{entry.sha256}`.", "",
        "## Held-out phantoms ("
        + ("cascade: demo liver model, then demo tumor model)" if tumor_evaluated else "liver stage of the cascade)"),
        "", held_out, "",
        f"{structure.capitalize()} per-case DSC mean {s['dsc_mean']:.3f}, global DSC {s['dsc_global']:.3f}.", "",
        evaluation_result["markdown"],
        per_case_table(evaluation_result["per_case"], ("liver", "tumor") if tumor_evaluated else ("liver",)), "",
        f"Mean cascade time per held-out case on the training machine's CPU: "
        f"{sum(evaluation_result['seconds_per_case']) / len(evaluation_result['seconds_per_case']):.1f} s.", "",
        "These figures are on phantoms from the same generator as the training data; they say the code "
        "works, not how a model would do on real CT (compare docs/definitions.md's reference figures only with real data).",
    ]
    path = DEMO_DIR / Path(entry.card).name
    write_text(path, "\n".join(lines) + "\n", overwrite=True)
    return path
