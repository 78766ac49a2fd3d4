"""Segmentation evaluation: per-case and global overlap and surface metrics for liver and tumor.

Structures follow the LiTS / MSD Task03 convention on 0/1/2 labelmaps: *liver* is the whole organ
(labels 1 and 2), *tumor* is label 2. Metrics (MONAI's implementations, physical spacing in mm):

- DSC per case, and global DSC = 2 * sum |P ∩ T| / sum (|P| + |T|) over all cases (the thesis' "global");
- HD95 and ASSD (symmetric average surface distance) in mm;
- precision |P ∩ T| / |P| and recall |P ∩ T| / |T|;
- the per-case DSC histogram in the thesis' bins 0-20, 20-40, 40-60, 60-80, 80-100 %.

Empty structures: both empty -> DSC 1, distances 0; exactly one empty -> DSC 0 and distances undefined
(NaN, left out of the means and counted in ``n_undefined_distance``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.core.grid import check_same_grid
from LiverTumorSegLib.io.atomic import staged_folder

STRUCTURES = {"liver": (1, 2), "tumor": (2,)}
DSC_BINS_PERCENT = (0, 20, 40, 60, 80, 100)


@dataclass(frozen=True)
class CaseMetrics:
    case: str
    structure: str
    dsc: float
    hd95_mm: float
    assd_mm: float
    precision: float
    recall: float
    truth_ml: float
    predicted_ml: float
    intersection_voxels: int
    truth_voxels: int
    predicted_voxels: int


def _surface_distances_mm(pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[float, float]:
    """(HD95, ASSD) in mm of two non-empty boolean masks (arrays z, y, x) with MONAI."""
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    pred_t = torch.from_numpy(pred[None, None].astype(np.uint8))
    truth_t = torch.from_numpy(truth[None, None].astype(np.uint8))
    spacing = [float(s) for s in spacing_zyx]
    hd95 = compute_hausdorff_distance(pred_t, truth_t, include_background=True, percentile=95, spacing=spacing)
    assd = compute_average_surface_distance(pred_t, truth_t, include_background=True, symmetric=True,
                                            spacing=spacing)
    return float(hd95.item()), float(assd.item())


def case_metrics(predicted: sitk.Image, truth: sitk.Image, case: str) -> list[CaseMetrics]:
    """Metrics of one case for every structure (liver, tumor); images are 0/1/2 labelmaps on one grid."""
    check_same_grid(predicted, truth, f"{case}: the prediction", "the truth (not the same voxel grid)")
    pred_labels = sitk.GetArrayViewFromImage(predicted)
    truth_labels = sitk.GetArrayViewFromImage(truth)
    spacing_zyx = tuple(reversed(truth.GetSpacing()))
    voxel_ml = float(np.prod(truth.GetSpacing())) / 1000.0
    results = []
    for structure, values in STRUCTURES.items():
        pred = np.isin(pred_labels, values)
        true = np.isin(truth_labels, values)
        n_pred, n_true = int(pred.sum()), int(true.sum())
        n_both = int(np.logical_and(pred, true).sum())
        if n_pred == 0 and n_true == 0:
            dsc, hd95, assd, precision, recall = 1.0, 0.0, 0.0, 1.0, 1.0
        else:
            dsc = 2.0 * n_both / (n_pred + n_true)
            precision = n_both / n_pred if n_pred else 0.0
            recall = n_both / n_true if n_true else 0.0
            hd95, assd = _surface_distances_mm(pred, true, spacing_zyx) if n_pred and n_true else (math.nan, math.nan)
        results.append(CaseMetrics(case, structure, dsc, hd95, assd, precision, recall,
                                   n_true * voxel_ml, n_pred * voxel_ml, n_both, n_true, n_pred))
    return results


def dsc_histogram(dscs: Sequence[float]) -> dict[str, int]:
    """Count of cases per thesis DSC bin (percent); 100 % falls in the last bin."""
    counts = {}
    edges = DSC_BINS_PERCENT
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        last = high == edges[-1]
        counts[f"{low}-{high}"] = sum(1 for d in dscs if low <= 100 * d < high or (last and 100 * d == high))
    return counts


def summarize(metrics: Sequence[CaseMetrics]) -> dict[str, dict]:
    """Per structure: mean/median DSC, global DSC, mean HD95/ASSD (defined cases), precision, recall, bins."""
    summary = {}
    for structure in STRUCTURES:
        rows = [m for m in metrics if m.structure == structure]
        if not rows:
            continue
        dscs = [m.dsc for m in rows]
        total = sum(m.truth_voxels + m.predicted_voxels for m in rows)
        defined = [m for m in rows if not math.isnan(m.hd95_mm)]
        summary[structure] = {
            "cases": len(rows),
            "dsc_mean": float(np.mean(dscs)),
            "dsc_median": float(np.median(dscs)),
            "dsc_global": 2.0 * sum(m.intersection_voxels for m in rows) / total if total else 1.0,
            "hd95_mm_mean": float(np.mean([m.hd95_mm for m in defined])) if defined else math.nan,
            "assd_mm_mean": float(np.mean([m.assd_mm for m in defined])) if defined else math.nan,
            "precision_mean": float(np.mean([m.precision for m in rows])),
            "recall_mean": float(np.mean([m.recall for m in rows])),
            "n_undefined_distance": len(rows) - len(defined),
            "dsc_histogram_percent": dsc_histogram(dscs),
        }
    return summary


def evaluate_folders(predicted_dir: str | Path, truth_dir: str | Path) -> tuple[list[CaseMetrics], dict]:
    """Evaluate every truth labelmap (``*.nrrd``, ``*.nii``, ``*.nii.gz``) against the prediction of the same name."""
    predicted_dir, truth_dir = Path(predicted_dir), Path(truth_dir)
    truth_files = sorted(p for p in truth_dir.iterdir() if p.name.endswith((".nrrd", ".nii", ".nii.gz")))
    if not truth_files:
        raise FileNotFoundError(f"No labelmaps (*.nrrd, *.nii, *.nii.gz) in {truth_dir}")
    missing = [p.name for p in truth_files if not (predicted_dir / p.name).is_file()]
    if missing:
        raise FileNotFoundError(f"{predicted_dir} lacks predictions for: {', '.join(missing)}")
    metrics: list[CaseMetrics] = []
    for truth_file in truth_files:
        truth = sitk.ReadImage(str(truth_file))
        predicted = sitk.ReadImage(str(predicted_dir / truth_file.name))
        metrics.extend(case_metrics(predicted, truth, truth_file.name))
    return metrics, summarize(metrics)


REPORT_FILES = ("per_case.csv", "summary.json", "summary.md")


def write_reports(metrics: Sequence[CaseMetrics], summary: dict, out_dir: str | Path, *,
                  overwrite: bool = True) -> dict[str, Path]:
    """Write ``per_case.csv``, ``summary.json`` and ``summary.md`` under ``out_dir``, together
    (``io.atomic.staged_folder``: all three or none; earlier reports are replaced only with ``overwrite``)."""
    out_dir = Path(out_dir)

    def write_csv(path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(CaseMetrics.__dataclass_fields__))
            writer.writeheader()
            writer.writerows(asdict(m) for m in metrics)

    with staged_folder(out_dir, REPORT_FILES, overwrite=overwrite) as staging:
        write_csv(staging / "per_case.csv")
        (staging / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        (staging / "summary.md").write_text(markdown_table(summary))
    return {"per_case_csv": out_dir / "per_case.csv", "summary_json": out_dir / "summary.json",
            "summary_md": out_dir / "summary.md"}


def markdown_table(summary: dict) -> str:
    lines = ["| structure | cases | DSC mean | DSC median | DSC global | HD95 mm | ASSD mm | precision | recall |",
             "|---|---|---|---|---|---|---|---|---|"]
    for structure, s in summary.items():
        lines.append(f"| {structure} | {s['cases']} | {s['dsc_mean']:.3f} | {s['dsc_median']:.3f} | "
                     f"{s['dsc_global']:.3f} | {s['hd95_mm_mean']:.2f} | {s['assd_mm_mean']:.2f} | "
                     f"{s['precision_mean']:.3f} | {s['recall_mean']:.3f} |")
    lines += ["", "Per-case DSC histogram (cases per bin, %):", "",
              "| structure | " + " | ".join(next(iter(summary.values()))["dsc_histogram_percent"]) + " |",
              "|---|" + "---|" * len(DSC_BINS_PERCENT[:-1])]
    for structure, s in summary.items():
        lines.append(f"| {structure} | " + " | ".join(str(v) for v in s["dsc_histogram_percent"].values()) + " |")
    return "\n".join(lines) + "\n"
