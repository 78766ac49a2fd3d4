"""Benchmark: FLR recompute after a resection plane move, and after a margin change, on a CT-sized grid.

A 512x512x200 labelmap (0.8 x 0.8 x 2.5 mm) holds an ellipsoidal liver of about 1500 mL (label 1) with two
spherical tumors (label 2). ``FLRCalculator`` is built once (what the GUI does when the segments change);
then the plane is moved several times and each ``compute`` (masks + figures, as the GUI needs them) is
timed; the margin mode is timed on its first call (tumor distance map) and on a later margin change
(cached distances). Prints one JSON line; times in seconds (median over the moves; max also given).

    .venv/bin/python benchmarks/flr.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.core.flr import FLRCalculator, compute_flr
from LiverTumorSegLib.core.resection import Plane

SHAPE_XYZ = (512, 512, 200)
SPACING_MM = (0.8, 0.8, 2.5)
LIVER_SEMI_AXES_MM = (95.0, 75.0, 50.0)  # 4/3 pi abc = 1492 mL
TUMORS_MM = [((-40.0, -10.0, 10.0), 15.0), ((45.0, 20.0, -15.0), 10.0)]  # centre offset, radius
TARGET_PLANE_S = 1.0


def phantom_labels() -> sitk.Image:
    """The benchmark labelmap, liver centred in the grid; LPS with identity direction."""
    centre = [(n - 1) * s / 2 for n, s in zip(SHAPE_XYZ, SPACING_MM, strict=True)]
    z, y, x = np.ogrid[: SHAPE_XYZ[2], : SHAPE_XYZ[1], : SHAPE_XYZ[0]]
    coords = [x * SPACING_MM[0] - centre[0], y * SPACING_MM[1] - centre[1], z * SPACING_MM[2] - centre[2]]
    inside = sum((c / a) ** 2 for c, a in zip(coords, LIVER_SEMI_AXES_MM, strict=True)) <= 1.0
    labels = inside.astype(np.uint8)
    for offset, radius in TUMORS_MM:
        sphere = sum((c - o) ** 2 for c, o in zip(coords, offset, strict=True)) <= radius**2
        labels[sphere & inside] = 2
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(SPACING_MM)
    image.SetOrigin(tuple(-c for c in centre))
    return image


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="plane moves to time (default 5)")
    args = parser.parse_args()
    labels = phantom_labels()
    setup_s, calculator = _timed(FLRCalculator.from_labelmap, labels)
    normal = (1.0, 0.3, 0.2)
    plane_times, flr_ratios = [], []
    for step in range(args.repeats):
        plane = Plane((-30.0 + 15.0 * step, 0.0, 0.0), normal)
        seconds, result = _timed(calculator.compute, planes=[plane], height_cm=170, weight_kg=70)
        plane_times.append(seconds)
        flr_ratios.append(round(result.figures.flr_ratio, 4))
    margin_first_s, margin_result = _timed(calculator.compute, margin_mm=10.0)
    margin_change_s, _ = _timed(calculator.compute, margin_mm=15.0)
    one_off_s, _ = _timed(compute_flr, labels, planes=[Plane((0.0, 0.0, 0.0), normal)])
    figures = result.figures
    plane_s = statistics.median(plane_times)
    print(
        json.dumps(
            {
                "benchmark": "flr",
                "shape": list(SHAPE_XYZ),
                "spacing_mm": list(SPACING_MM),
                "liver_voxels": calculator.geometry.parenchyma_count,
                "total_liver_ml": round(figures.total_liver_ml, 1),
                "tumor_ml": round(figures.tumor_ml, 1),
                "setup_s": round(setup_s, 4),
                "plane_recompute_s": round(plane_s, 4),
                "plane_recompute_max_s": round(max(plane_times), 4),
                "plane_moves": args.repeats,
                "plane_flr_ratios": flr_ratios,
                "margin_recompute_s": round(margin_first_s, 4),
                "margin_change_s": round(margin_change_s, 4),
                "margin_10mm_resected_ml": round(margin_result.figures.resected_ml, 1),
                "one_off_compute_flr_s": round(one_off_s, 4),
                "target_plane_s": TARGET_PLANE_S,
                "plane_vs_target": round(plane_s / TARGET_PLANE_S, 4),
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
