"""Benchmark: load a 512x512x300 CT series with ``dicom_io.load_series`` and with SimpleITK's ImageSeriesReader.

A synthetic abdomen-like CT (body ellipse, liver-like ellipsoid, noise; 0.75 x 0.75 x 1.0 mm, int16 HU) is
written by ``dicom_write.write_ct_series`` (one uncompressed file per slice) to a temporary folder. Then,
in the same run and on the same files, best of N:

- ours: ``load_series(folder)`` (folder scan, header checks, HU conversion, SimpleITK image);
- sitk: ``ImageSeriesReader.GetGDCMSeriesFileNames(folder)`` (GDCM scan and sort) + ``Execute()``;
  the reader alone is also given (``sitk_read_only_s``).

Both arrays (and origins/spacings) must be equal. Prints one JSON line; times in seconds.

    .venv/bin/python benchmarks/dicom_load.py [--repeats 3] [--slices 300]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.io.dicom_io import load_series
from LiverTumorSegLib.io.dicom_write import write_ct_series

SIZE_XY = 512
SPACING_MM = (0.75, 0.75, 1.0)
TARGET_RATIO = 1.5


def synthetic_ct(slices: int, seed: int = 0) -> sitk.Image:
    """(x, y, z) = (512, 512, ``slices``) int16 HU volume: air, body (40 HU), liver (60 HU), noise sd 10."""
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[:SIZE_XY, :SIZE_XY]
    body = ((x - 256) / 220.0) ** 2 + ((y - 256) / 160.0) ** 2 <= 1
    volume = np.full((slices, SIZE_XY, SIZE_XY), -1000, np.int16)
    for z in range(slices):
        liver_radius = 90 * np.sqrt(max(0.0, 1 - ((z - slices / 2) / (slices / 2)) ** 2))
        liver = ((x - 200) ** 2 + (y - 240) ** 2) <= liver_radius**2
        volume[z][body] = 40
        volume[z][liver] = 60
    volume += rng.normal(0, 10, volume.shape).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(SPACING_MM)
    image.SetOrigin((-191.625, -191.625, -150.0))
    return image


def _best_of(repeats: int, function):
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return min(times), value


def _sitk_load(folder: str) -> tuple[sitk.Image, float]:
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    start = time.perf_counter()
    image = reader.Execute()
    return image, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each loader, best kept (default 3)"
    )
    parser.add_argument("--slices", type=int, default=300, help="number of slices (default 300)")
    args = parser.parse_args()
    image = synthetic_ct(args.slices)
    with tempfile.TemporaryDirectory(prefix="lta-dicom-bench-") as tmp:
        folder = Path(tmp) / "series"
        start = time.perf_counter()
        files = write_ct_series(image, folder, series_description="benchmark")
        write_s = time.perf_counter() - start
        ours_s, ours = _best_of(args.repeats, lambda: load_series(folder))
        sitk_s, (theirs, _) = _best_of(args.repeats, lambda: _sitk_load(str(folder)))
        sitk_read_only_s = min(_sitk_load(str(folder))[1] for _ in range(args.repeats))
    ours_array, theirs_array = sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(theirs)
    if not np.array_equal(ours_array, theirs_array) or not np.array_equal(
        ours_array, sitk.GetArrayViewFromImage(image)
    ):
        raise SystemExit("dicom_load benchmark: load_series and ImageSeriesReader arrays differ")
    geometry_error_mm = max(
        np.abs(np.subtract(ours.GetOrigin(), theirs.GetOrigin())).max(),
        np.abs(np.subtract(ours.GetSpacing(), theirs.GetSpacing())).max(),
    )
    print(
        json.dumps(
            {
                "benchmark": "dicom_load",
                "shape": list(ours_array.shape),
                "ours_s": round(ours_s, 3),
                "sitk_s": round(sitk_s, 3),
                "ratio": round(ours_s / sitk_s, 3),
                "target_ratio": TARGET_RATIO,
                "files": len(files),
                "sitk_read_only_s": round(sitk_read_only_s, 3),
                "ratio_vs_read_only": round(ours_s / sitk_read_only_s, 3),
                "write_s": round(write_s, 3),
                "ours_dtype": ours.GetPixelIDTypeAsString(),
                "sitk_dtype": theirs.GetPixelIDTypeAsString(),
                "geometry_max_abs_diff_mm": float(geometry_error_mm),
                "repeats": args.repeats,
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
