"""Oracle: ``load_series`` against dcm2niix (an independent DICOM -> NIfTI converter, own decoders).

dcm2niix writes NIfTI (RAS world, its own axis order and flips; raw stored values with scl_slope/scl_inter,
``-l o``). The comparison maps our voxel grid (LPS) into the NIfTI voxel grid: ``inv(A_nifti) @ A_ours``
must be a signed permutation with an integer shift (every voxel centre agrees within 1e-4 mm), and the
HU at the mapped voxels must be equal exactly. pydicom's own test data holds one CT file
(``CT_small.dcm``, a single slice); its other CT files (``liver*.dcm``) are downloads, not shipped.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import dcm2niix
import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1

from LiverTumorSegLib.io.dicom_io import load_series
from LiverTumorSegLib.io.dicom_write import write_ct_series, write_enhanced_ct

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
TOL_MM = 1e-4


def ct_image(oblique: bool) -> sitk.Image:
    """(x, y, z) = (30, 20, 7) int16 HU in [-1024, 2000), anisotropic spacing, axial or oblique."""
    values = np.random.default_rng(5).integers(-1024, 2000, (7, 20, 30)).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-10.3, 20.1, 30.5))
    if oblique:
        a, b = np.radians(20), np.radians(-35)
        rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
        image.SetDirection((rz @ rx).ravel())
    return image


def run_dcm2niix(dicom_dir: Path, out_dir: Path) -> nibabel.Nifti1Image:
    """Convert the one series of ``dicom_dir``: no compression, no BIDS sidecar, no cropping, original
    integer type with scl_slope/scl_inter."""
    out_dir.mkdir(parents=True)
    command = [
        dcm2niix.bin,
        "-z",
        "n",
        "-b",
        "n",
        "-x",
        "n",
        "-l",
        "o",
        "-f",
        "series",
        "-o",
        str(out_dir),
        str(dicom_dir),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, encoding="utf-8", timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (nifti,) = out_dir.glob("*.nii")
    return nibabel.load(nifti)


def assert_matches_nifti(ours: sitk.Image, nifti: nibabel.Nifti1Image) -> None:
    affine_ours = np.eye(4)
    affine_ours[:3, :3] = np.reshape(ours.GetDirection(), (3, 3)) * np.array(ours.GetSpacing())
    affine_ours[:3, 3] = ours.GetOrigin()
    affine_ours = LPS_TO_RAS @ affine_ours  # our voxel index (i, j, k) -> RAS mm
    index_map = np.round(np.linalg.inv(nifti.affine) @ affine_ours)  # our index -> NIfTI index
    np.testing.assert_allclose(nifti.affine @ index_map, affine_ours, atol=TOL_MM, rtol=0)
    permutation = index_map[:3, :3]
    assert sorted(np.abs(permutation).sum(axis=0)) == [1, 1, 1] and sorted(
        np.abs(permutation).sum(axis=1)
    ) == [1, 1, 1]
    hu_nifti = np.asanyarray(nifti.dataobj)  # scl_slope / scl_inter applied
    hu_ours = sitk.GetArrayFromImage(ours).transpose(2, 1, 0)  # (i, j, k)
    assert sorted(hu_ours.shape) == sorted(hu_nifti.shape)
    indices = np.indices(hu_ours.shape).reshape(3, -1)
    mapped = (permutation @ indices + index_map[:3, 3:]).astype(int)
    remapped = np.empty_like(hu_nifti)
    remapped[tuple(mapped)] = hu_ours.ravel()
    assert np.array_equal(remapped, hu_nifti)


@pytest.mark.parametrize(
    ("oblique", "syntax", "enhanced"),
    [
        (False, ExplicitVRLittleEndian, False),
        (True, ExplicitVRLittleEndian, False),
        (True, JPEGLosslessSV1, False),
        (True, ExplicitVRLittleEndian, True),
    ],
    ids=["axial", "oblique", "oblique-jpeg-lossless", "oblique-enhanced"],
)
def test_written_series_matches_dcm2niix(tmp_path, oblique, syntax, enhanced):
    image = ct_image(oblique)
    if enhanced:
        write_enhanced_ct(image, tmp_path / "dicom" / "enhanced.dcm", transfer_syntax_uid=syntax)
    else:
        write_ct_series(image, tmp_path / "dicom", transfer_syntax_uid=syntax)
    ours = load_series(tmp_path / "dicom")
    assert np.array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(image))
    assert_matches_nifti(ours, run_dcm2niix(tmp_path / "dicom", tmp_path / "nifti"))


def test_pydicom_ct_small_matches_dcm2niix(tmp_path):
    (tmp_path / "dicom").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "dicom")
    ours = load_series(tmp_path / "dicom")
    assert ours.GetSize() == (128, 128, 1) and ours.GetPixelID() == sitk.sitkInt16
    assert ours.GetSpacing()[2] == pytest.approx(5.0)  # Slice Thickness of the single slice
    assert_matches_nifti(ours, run_dcm2niix(tmp_path / "dicom", tmp_path / "nifti"))
