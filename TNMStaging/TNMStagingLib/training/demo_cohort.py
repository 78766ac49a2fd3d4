"""The phantom cohort of the demo staging model: synthetic CTs staged by the AJCC rules (never real data)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def phantom_stage(tumors) -> tuple[str, str]:
    """AJCC 8th HCC stage of a phantom from its tumors' design diameters; a tumor touching a vessel counts as
    vascular invasion ``"suspected"`` (turns a solitary tumor > 2 cm into T2); N0 M0. Returns (stage, T)."""
    from TNMStagingLib.core import ajcc

    vascular = "suspected" if any(t.touches_vessel for t in tumors) else "none"
    result = ajcc.stage([t.diameter_mm for t in tumors], vascular_invasion=vascular)
    return result.stage, result.T


def write_phantom_cohort(out: Path, per_stage: int = 6, max_seeds: int = 200, size_xy: int = 128) -> dict:
    """Phantoms (``LiverTumorSegLib.synthetic.phantom``, 1-4 tumors, 5 mm slices) written as ``out/PHnnn/20240101/``
    ``ct.nii.gz + labels.nii.gz`` with ``out/stages.csv``, seeds tried in order until each AJCC stage group
    has ``per_stage`` phantoms. Returns ``{stage: count}``."""
    from LiverTumorSegLib.io.atomic import write_image
    from LiverTumorSegLib.synthetic.phantom import make_phantom
    from TNMStagingLib.training.cohort import write_csv

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
        write_image(phantom.ct, folder / "ct.nii.gz", overwrite=True)
        write_image(phantom.labels, folder / "labels.nii.gz", overwrite=True)
        diameters = " ".join(f"{tumor.diameter_mm:g}" for tumor in phantom.tumors)
        vessel = any(tumor.touches_vessel for tumor in phantom.tumors)
        rows.append([f"PH{seed:03d}", "2024-01-01", stage, t, diameters, str(vessel).lower(), seed])
        if len(counts) >= 4 and min(counts.values()) >= per_stage:
            break
    write_csv(out / "stages.csv", rows)
    return dict(counts)
