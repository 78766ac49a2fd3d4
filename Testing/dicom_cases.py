"""Shared helpers of the DICOM SEG / SR / node tests: small oblique CT series with asymmetric 0/1/2 labels, the
independent truth readers (SimpleITK's GDCM series reader, dcmqi's command line tools) and the real-CT folder.

Series are written by the product's own ``io.dicom_write.write_ct_series`` (any direction, one file per slice);
the geometry a reader must find is what SimpleITK's ImageSeriesReader makes of the files (``sitk_read``).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import MRImageStorage

from LiverTumorSegLib.io.dicom_write import write_ct_series

REPO = Path(__file__).resolve().parents[1]


def rotation(ax_deg: float, ay_deg: float, az_deg: float) -> np.ndarray:
    """3x3 rotation matrix Rz @ Ry @ Rx (angles in degrees)."""
    ax, ay, az = np.radians([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_volume(size, spacing, origin, direction, seed: int = 0) -> sitk.Image:
    """An int16 'CT' (HU) on the given grid (size/spacing/origin x y z, direction 3x3): a body of soft tissue (noise
    around 40 HU) in air (about -1000 HU) with a brighter ellipsoid, so that it passes the CT plausibility gate."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in reversed(size)), indexing="ij")
    hu = rng.normal(40, 10, size=tuple(reversed(size)))
    hu[(x / 0.95) ** 2 + (y / 0.9) ** 2 >= 1] -= 1040  # air around the body
    hu[(x / 0.8) ** 2 + (y / 0.6) ** 2 + (z / 0.9) ** 2 < 1] += 80
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
    return image


def write_series(image: sitk.Image, folder: Path, *, modality: str = "CT", patient_id: str = "TEST-PATIENT",
                 series_description: str = "synthetic") -> list[Path]:
    """``image`` as a single-frame series in ``folder`` (one file per slice, in k order). ``modality`` "MR" writes
    MR Image Storage files (for refusal tests)."""
    paths = write_ct_series(image, folder, patient_id=patient_id, modality=modality,
                            series_description=series_description)
    if modality == "MR":
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            ds.save_as(path, enforce_file_format=True)
    return paths


def sitk_read(paths: list[Path]) -> sitk.Image:
    """The truth: SimpleITK's (GDCM's) reading of the files, which sorts them along the slice normal."""
    reader = sitk.ImageSeriesReader()
    series_uid = str(pydicom.dcmread(str(paths[0]), stop_before_pixels=True).SeriesInstanceUID)
    names = reader.GetGDCMSeriesFileNames(str(Path(paths[0]).parent), series_uid)
    assert len(names) == len(paths), f"GDCM found {len(names)} files of series {series_uid}, expected {len(paths)}"
    reader.SetFileNames(names)
    return reader.Execute()


def blob_labels(reference: sitk.Image, seed: int = 1) -> sitk.Image:
    """0/1/2 uint8 labels on ``reference``'s grid: an asymmetric 'liver' (1) holding two 'tumors' (2), built in
    index space so that any flip or transposition changes voxels."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = reference.GetSize()
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    labels = np.zeros((nz, ny, nx), np.uint8)
    liver = (((x - 0.4 * nx) / (0.35 * nx)) ** 2 + ((y - 0.55 * ny) / (0.3 * ny)) ** 2
             + ((z - 0.4 * nz) / (0.45 * nz)) ** 2 < 1)
    labels[liver] = 1
    labels[(x < 0.25 * nx) & (y < 0.2 * ny)] = 1  # a corner piece: breaks every symmetry
    for _ in range(2):
        c = rng.uniform(0.3, 0.6, 3) * np.array([nx, ny, nz])
        labels[(((x - c[0]) ** 2 + (y - c[1]) ** 2) / 4.0 + (z - c[2]) ** 2 < 1.5) & liver] = 2
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(reference)
    return image


def small_series(folder: Path, seed: int, *, modality: str = "CT") -> tuple[list[Path], sitk.Image]:
    """A 48 x 40 x 12 oblique series (0.8 x 0.8 x 3 mm) in ``folder`` and 0/1/2 labels on its grid."""
    volume = make_volume((48, 40, 12), (0.8, 0.8, 3.0), (-20.0, -16.0, 30.0 * seed), rotation(5.0 * seed, 0, 3.0),
                         seed)
    paths = write_series(volume, folder, modality=modality, patient_id=f"NODE-{seed}")
    return paths, blob_labels(sitk_read(paths), seed=seed)


def uid_of(path: Path, keyword: str) -> str:
    """A UID (e.g. ``StudyInstanceUID``) of a DICOM file."""
    return str(pydicom.dcmread(str(path), stop_before_pixels=True)[keyword].value)


def dcmqi_tool(name: str) -> Path:
    """A dcmqi command line tool (pip package ``dcmqi``, test extra): beside this Python, in the package, on PATH."""
    candidates = [Path(sys.executable).parent / name]
    try:
        import dcmqi

        candidates.append(Path(dcmqi.__file__).parent / "bin" / name)
    except ImportError:
        pass
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"dcmqi tool {name} not found: install the test extra (pip install dcmqi)", pytrace=False)
    return Path(found)


def realct_dir() -> Path:
    """The shared real-CT samples: ``$LIVERTUMOR_REALCT_DIR``, else ``<repo>/../shared/realct``; the calling test
    is skipped, saying so, when the folder is absent."""
    folder = Path(os.environ.get("LIVERTUMOR_REALCT_DIR") or REPO.parent / "shared" / "realct")
    if not (folder / "README.md").is_file():
        pytest.skip(f"real-CT samples not found at {folder} (set LIVERTUMOR_REALCT_DIR): this real-data check did not run")
    return folder
