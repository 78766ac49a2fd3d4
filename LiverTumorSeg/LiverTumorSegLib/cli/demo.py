"""``livertumor demo``: the whole pipeline on the embedded default input, the synthetic CT phantom.

Phantom -> DICOM CT series (+ truth labelmap) -> loaded as a volume node by the DICOM loader -> the
cascade in the background worker with the demo models -> a segmentation node with Liver / Liver tumor
segments -> ``segmentation.seg.nrrd``, ``measurements.csv`` (volumes, lesions, FLR of a demonstration
right-sided resection plane), and preview PNGs with the mask overlays, all in one output folder. Runs
headless on Slicer's MRML core (slicer-core), the same scene bridge the module uses inside Slicer.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.core.hu_windows import load_presets
from LiverTumorSegLib.io.atomic import atomic_write, write_image
from LiverTumorSegLib.io.preview import label_masks, write_previews
from LiverTumorSegLib.models.manifest import load_manifest
from LiverTumorSegLib.synthetic.phantom import make_phantom, write_phantom

DEMO_WINDOWS = ("abdomen", "liver_portal_venous", "model_input_thesis")  # the phantom is portal-venous
DEMO_LIVER_MODEL, DEMO_TUMOR_MODEL = "demo-liver-segresnet", "demo-tumor-segresnet"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _segment(volume_node, out_dir: Path, device: str, log, tumor_model: str | None):
    """Run the cascade worker on the volume node; returns the new segmentation node."""
    from LiverTumorSegLib.scene.run import SegmentationRun

    run = SegmentationRun(volume_node, liver_model=DEMO_LIVER_MODEL, tumor_model=tumor_model, device=device)
    last = [-1]

    def show(event) -> None:
        if event.fraction is not None and int(10 * event.fraction) > last[0]:
            last[0] = int(10 * event.fraction)
            log(f"      {100 * event.fraction:5.1f}% {event.stage}: {event.message}")

    return run.run_blocking(on_progress=show)


def _flr_plane(labels: sitk.Image):
    """A demonstration plane: resect the liver to the patient's right of the liver's centroid (LPS -x)."""
    from LiverTumorSegLib.core.resection import Plane

    liver = sitk.GetArrayViewFromImage(labels) > 0
    z, y, x = np.nonzero(liver)
    centroid = labels.TransformContinuousIndexToPhysicalPoint((float(x.mean()), float(y.mean()), float(z.mean())))
    return Plane(centroid, (-1.0, 0.0, 0.0))


def _write_measurements(path: Path, table_rows: list[dict], flr_rows: list[tuple[str, str, str]]) -> None:
    atomic_write(path, lambda temporary: _write_measurement_rows(temporary, table_rows, flr_rows), overwrite=True)


def _write_measurement_rows(path: Path, table_rows: list[dict], flr_rows: list[tuple[str, str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["section", "item", "value", "unit"])
        for row in table_rows:
            name = row.get("Structure", "")
            for key, value in row.items():
                if key != "Structure" and value is not None:
                    writer.writerow(["segmentation", f"{name}: {key}", f"{value:.4g}" if isinstance(value, float)
                                     else value, ""])
        for name, value, unit in flr_rows:
            writer.writerow(["future liver remnant", name, value, unit])


def run_demo(out_dir: str | Path, *, seed: int = 42, size_xy: int = 512, device: str = "auto", log=print) -> dict:
    """Write the demo outputs under ``out_dir``; returns the summary (paths as strings)."""
    from LiverTumorSegLib.scene import input as scene_input
    from LiverTumorSegLib.scene import segmentations
    from LiverTumorSegLib.scene import volumes as scene
    from LiverTumorSegLib.testing import headless_slicer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log(f"[1/5] synthetic CT phantom (seed {seed}, {size_xy}x{size_xy} in-plane) as a DICOM series")
    phantom = make_phantom(seed, size_xy=size_xy)
    paths = write_phantom(phantom, out_dir / "phantom")
    log("[2/5] loading the series into the scene (headless Slicer MRML)")
    headless_slicer.bootstrap()
    mrml = headless_slicer.new_scene()
    volume_node, _ = scene_input.load_dicom_volume(paths["dicom"], scene=mrml)
    ct = scene.image_from_volume_node(volume_node)  # the CT as read back from DICOM, not the generator's copy
    summary = {"out_dir": str(out_dir.resolve()), "dicom_dir": str(paths["dicom"]),
               "truth_labels": str(paths["truth"]), "ct_size": list(phantom.ct.GetSize()),
               "ct_spacing_mm": [round(s, 4) for s in phantom.ct.GetSpacing()],
               "truth_liver_ml": round(phantom.liver_volume_ml(), 1),
               "truth_tumor_ml": round(phantom.tumor_volume_ml(), 1), "truth_tumors": len(phantom.tumors)}
    models = load_manifest()
    if DEMO_LIVER_MODEL in models and DEMO_TUMOR_MODEL in models:
        log(f"[3/5] liver and tumor cascade in the background worker ({models[DEMO_LIVER_MODEL].display_name})")
        segmentation = _segment(volume_node, out_dir, device, log, DEMO_TUMOR_MODEL)
        summary["segmentation_source"] = "demo models (phantom-trained)"
    elif DEMO_LIVER_MODEL in models:
        log(f"[3/5] liver stage of the cascade in the background worker ({models[DEMO_LIVER_MODEL].display_name}); "
            "there is no demo tumor model yet, so tumors are not segmented")
        segmentation = _segment(volume_node, out_dir, device, log, None)
        summary["segmentation_source"] = "demo liver model (phantom-trained; liver stage only, no demo tumor model yet)"
    else:
        log("[3/5] no demo segmentation models in the manifest yet (`livertumor demo-models` trains them): "
            "the phantom's TRUTH labelmap is imported as the segmentation instead")
        segmentation = segmentations.labelmap_to_segmentation(phantom.labels, volume_node, name="phantom truth")
        summary["segmentation_source"] = "phantom truth (no demo models yet)"
    summary.update(_measure(ct, phantom.labels, volume_node, segmentation, out_dir, log))
    summary["elapsed_s"] = round(time.perf_counter() - started, 1)
    return summary


def _previews(ct: sitk.Image, labels: sitk.Image, out_dir: Path, log) -> dict[str, str]:
    log("[5/5] previews with the contours at the abdomen, portal-venous liver and model-input windows")
    presets = load_presets()
    previews = {}
    for window_id in DEMO_WINDOWS:
        written = write_previews(ct, out_dir / "previews", window=presets[window_id], masks=label_masks(labels),
                                 prefix=f"{window_id}_")
        previews.update({f"{window_id}_{plane_name}": str(p) for plane_name, p in written.items()})
    return previews


def _measure(ct: sitk.Image, truth_labels: sitk.Image, volume_node, segmentation, out_dir: Path, log) -> dict:
    """Save the segmentation, measure it (volumes, lesions, FLR of a demonstration plane), write previews."""
    from LiverTumorSegLib.core.flr import compute_flr, flr_rows
    from LiverTumorSegLib.io.preview import write_flr_preview
    from LiverTumorSegLib.scene import segmentations
    from LiverTumorSegLib.scene.results import current_labelmap, update_measurements_table
    from LiverTumorSegLib.scene.tables import read_rows

    segmentations.save_segmentation(segmentation, out_dir / "segmentation.seg.nrrd")
    labels = current_labelmap(segmentation, volume_node)
    write_image(labels, out_dir / "labels.nrrd", overwrite=True)
    log("[4/5] measurements and the future liver remnant of a demonstration resection plane")
    table = read_rows(update_measurements_table(segmentation, volume_node, labels=labels))
    flr = compute_flr(labels, planes=[_flr_plane(labels)], height_cm=170.0, weight_kg=70.0)
    figures = flr.figures.to_dict()
    _write_measurements(out_dir / "measurements.csv", table, flr_rows(figures))
    previews = _previews(ct, labels, out_dir, log)
    written = write_flr_preview(ct, flr.remnant, flr.resected, flr.tumor, out_dir / "previews")
    previews.update({f"flr_{plane_name}": str(p) for plane_name, p in written.items()})
    predicted, truth = sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(truth_labels)
    return {
        "segmentation": str(out_dir / "segmentation.seg.nrrd"), "measurements_csv": str(out_dir / "measurements.csv"),
        "liver_ml": round(float(table[0]["Volume (mL)"]), 1), "tumor_ml": round(float(table[2]["Volume (mL)"]), 1),
        "lesions": int(table[2]["Lesion count"] or 0),
        "liver_dice_vs_truth": round(_dice(predicted > 0, truth > 0), 4),
        "tumor_dice_vs_truth": round(_dice(predicted == 2, truth == 2), 4),
        "flr": {key: figures[key] for key in ("flr_ml", "flr_ratio", "sflr", "verdict")},
        "previews": previews,
    }


def _run_cli(args: argparse.Namespace) -> int:
    summary = run_demo(args.out, seed=args.seed, size_xy=args.size, device=args.device,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(summary))
    print(f"Segmentation from {summary['segmentation_source']}: liver {summary['liver_ml']} mL (truth "
          f"{summary['truth_liver_ml']}), tumor {summary['tumor_ml']} mL (truth {summary['truth_tumor_ml']}), "
          f"{summary['lesions']} lesion(s); FLR {summary['flr']['flr_ml']:.0f} mL ({summary['flr']['verdict']}).",
          file=sys.stderr)
    print(f"Demo outputs are in {summary['out_dir']}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the whole pipeline on the synthetic CT phantom",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=42, help="phantom seed (default 42)")
    parser.add_argument("--size", type=int, default=512, help="in-plane matrix size (default 512)")
    parser.add_argument("--device", default="auto", help="auto or cpu")
    parser.set_defaults(func=_run_cli)
