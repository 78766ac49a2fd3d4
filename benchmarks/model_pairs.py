"""Every liver stage with every tumor stage, on the real CT samples and on held-out phantoms.

Real CT (``../shared/realct``, see its README): ``contrast_dicom`` (20-slice portal-venous abdomen, JPEG 2000
DICOM; reference: TotalSegmentator's liver, label 5), ``totalseg_3mm`` (whole abdomen, 3 mm, non-contrast;
TotalSegmentator's liver) and ``dcmqi_3slice`` (3 slices through the liver; a liver drawn in Slicer). None has a
tumor truth: on them the tumor columns say what a stage *finds*, which is unconfirmed. Phantoms: seeds 9001
and 9002 (never used in training: the demo models saw 1000..1039 and 2000..2059), 256 x 256 in-plane, three
tumors each, with their truth labels.

For every pair ``run_cascade`` runs end to end (the liver stage again for each tumor stage, so each row is a
real run). Per pair one JSON line: liver Dice against the reference and volumes, tumor volume, lesion count,
tumor Dice (phantoms), the mean HU of what was called tumor minus that of the remaining liver (a hypodense
lesion in portal-venous phase is tens of HU darker; a value near 0 means parenchyma was called tumor), the
tumor stage's raw output outside the final liver (what the cascade's
tumors-inside-the-liver rule removes), and the stage times. A liver model whose weights are not in the model
cache is reported as not evaluated, with the reason. Models are fetched when ``--fetch`` is given.

Usage: ``python benchmarks/model_pairs.py [--fetch] [--cases contrast_dicom,...] [--markdown FILE]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.core.cascade import run_cascade
from LiverTumorSegLib.io.dicom_io import load_series
from LiverTumorSegLib.models import networks, registry
from LiverTumorSegLib.models.manifest import load_manifest

REALCT = Path(__file__).resolve().parents[1].parent / "shared" / "realct"
LIVER_MODELS = ("demo-liver-segresnet", "kuleuven-liver-ct", "monai-wholebody-ct-lowres")
TUMOR_MODELS = ("demo-tumor-segresnet", "kuleuven-lesion-ct")
PHANTOM_SEEDS = (9001, 9002)


def _on_grid(labels: sitk.Image, ct: sitk.Image) -> sitk.Image:
    return sitk.Resample(labels, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def real_cases(root: Path) -> dict:
    """{name: (ct, reference liver 0/1 on the CT grid, tumor truth or None)} of the real samples."""
    contrast = load_series(root / "totalseg_contrast_dicom" / "dicom")
    totalseg = sitk.ReadImage(str(root / "totalseg_3mm" / "ct.nii.gz"))
    three = load_series(root / "dcmqi_ct_3slice")
    refs = {
        "contrast_dicom": (contrast, sitk.ReadImage(str(root / "totalseg_contrast_dicom" / "totalsegmentator_labels.nii.gz")) == 5),
        "totalseg_3mm": (totalseg, sitk.ReadImage(str(root / "totalseg_3mm" / "totalsegmentator_labels.nii.gz")) == 5),
        "dcmqi_3slice": (three, sitk.ReadImage(str(root / "dcmqi_ct_3slice" / "liver_seg.nrrd")) > 0),
    }
    return {name: (ct, _on_grid(sitk.Cast(ref, sitk.sitkUInt8), ct), None) for name, (ct, ref) in refs.items()}


def phantom_cases() -> dict:
    from LiverTumorSegLib.synthetic.phantom import make_phantom

    cases = {}
    for seed in PHANTOM_SEEDS:
        phantom = make_phantom(seed, size_xy=256, n_tumors=3)
        cases[f"phantom_{seed}"] = (phantom.ct, sitk.Cast(phantom.labels > 0, sitk.sitkUInt8),
                                    sitk.Cast(phantom.labels == 2, sitk.sitkUInt8))
    return cases


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else round(2.0 * int(np.logical_and(a, b).sum()) / total, 3)


def load(model_id: str, manifest: dict, fetch: bool):
    entry = manifest[model_id]
    try:
        return networks.load_model(entry, registry.resolve_model_file(entry, download=fetch)), None
    except registry.RegistryError as error:
        return None, str(error).split(":")[0] + ": weights not in the model cache (" + type(error).__name__ + ")"


def run_pair(ct: sitk.Image, reference: sitk.Image, truth: sitk.Image | None, liver, tumor) -> dict:
    raw_outputs: list[sitk.Image] = []
    if tumor.stage is not None:  # record the stage's own output before the cascade's rules
        stage = tumor.stage
        tumor = networks.LoadedModel(tumor.entry, tumor.module,
                                     lambda *args: raw_outputs.append(stage(*args)) or raw_outputs[-1])
    tick = time.perf_counter()
    result = run_cascade(ct, liver, tumor, device="cpu")
    seconds = time.perf_counter() - tick
    labels = sitk.GetArrayViewFromImage(result.labels)
    voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
    row = {
        "liver_dice": dice(labels > 0, sitk.GetArrayViewFromImage(reference) > 0),
        "liver_ml": round(result.liver_volume_ml, 1),
        "reference_liver_ml": round(float((sitk.GetArrayViewFromImage(reference) > 0).sum()) * voxel_ml, 1),
        "tumor_ml": round(result.tumor_volume_ml, 2),
        "lesions": len(result.lesions),
        "liver_s": round(result.timings_s.get("liver_inference", 0.0), 1),
        "tumor_s": round(result.timings_s.get("tumor_inference", 0.0), 1),
        "total_s": round(seconds, 1),
    }
    hu = sitk.GetArrayViewFromImage(ct)
    if row["tumor_ml"] > 0 and (labels == 1).any():  # a real lesion differs from the parenchyma around it
        row["tumor_minus_liver_hu"] = round(float(hu[labels == 2].mean() - hu[labels == 1].mean()), 1)
    if truth is not None:
        row["tumor_dice"] = dice(labels == 2, sitk.GetArrayViewFromImage(truth) > 0)
        row["truth_tumor_ml"] = round(float((sitk.GetArrayViewFromImage(truth) > 0).sum()) * voxel_ml, 2)
    if raw_outputs:
        raw = sitk.GetArrayViewFromImage(raw_outputs[-1]) > 0
        row["tumor_outside_liver_ml"] = round(float((raw & (labels == 0)).sum()) * voxel_ml, 2)
        if truth is not None:  # how much of that removed output was true tumor the liver stage missed
            true_tumor = sitk.GetArrayViewFromImage(truth) > 0
            row["tumor_outside_liver_true_ml"] = round(float((raw & (labels == 0) & true_tumor).sum()) * voxel_ml, 2)
    return row


def _outside(row: dict) -> str:
    if "tumor_outside_liver_ml" not in row:
        return "-"
    true = f" ({row['tumor_outside_liver_true_ml']} true tumor)" if "tumor_outside_liver_true_ml" in row else ""
    return f"{row['tumor_outside_liver_ml']}{true}"


def markdown(rows: list[dict]) -> str:
    head = ("| case | liver stage | tumor stage | liver Dice | liver mL (ref) | tumor mL | lesions | tumor - liver HU "
            "| tumor Dice (truth mL) | raw tumor output outside liver mL | liver s | tumor s |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['liver']} | {r['tumor']} | not run: {r['error']} |" + " |" * 8)
            continue
        truth = f"{r['tumor_dice']} ({r['truth_tumor_ml']})" if "tumor_dice" in r else "no truth"
        lines.append(f"| {r['case']} | {r['liver']} | {r['tumor']} | {r['liver_dice']} | {r['liver_ml']} "
                     f"({r['reference_liver_ml']}) | {r['tumor_ml']} | {r['lesions']} | {r.get('tumor_minus_liver_hu', '-')} | "
                     f"{truth} | "
                     f"{_outside(r)} | {r['liver_s']} | {r['tumor_s']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fetch", action="store_true", help="fetch missing models first")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--realct", type=Path, default=REALCT)
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    args = parser.parse_args(argv)
    if not args.realct.is_dir():
        print(f"model_pairs: {args.realct} is missing (the real CT samples)", file=sys.stderr)
        return 2
    manifest = load_manifest()
    livers = {model_id: load(model_id, manifest, args.fetch) for model_id in LIVER_MODELS}
    tumors = {model_id: load(model_id, manifest, args.fetch) for model_id in TUMOR_MODELS}
    cases = {**real_cases(args.realct), **phantom_cases()}
    wanted = [c for c in args.cases.split(",") if c] or list(cases)
    rows = []
    for case in wanted:
        ct, reference, truth = cases[case]
        for liver_id, (liver, liver_error) in livers.items():
            for tumor_id, (tumor, tumor_error) in tumors.items():
                row = {"case": case, "liver": liver_id, "tumor": tumor_id}
                if liver_error or tumor_error:
                    row["error"] = liver_error or tumor_error
                else:
                    try:
                        row.update(run_pair(ct, reference, truth, liver, tumor))
                    except ValueError as error:  # e.g. a CT too short for a stage
                        row["error"] = str(error)
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.markdown:
        args.markdown.write_text(markdown(rows), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
