"""Synthetic CT phantom: determinism, geometry in mm, tissue HU, liver volume, tumors, files, command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorSegLib.synthetic.phantom import SLICE_THICKNESSES_MM, make_phantom, write_phantom

FAST = {"size_xy": 64, "slice_thickness_mm": 5.0}


def arrays(phantom):
    return sitk.GetArrayFromImage(phantom.ct), sitk.GetArrayFromImage(phantom.labels)


def voxel_ml(image) -> float:
    return float(np.prod(image.GetSpacing())) / 1000.0


def read_series(folder) -> sitk.Image:
    try:
        from LiverTumorSegLib.io.dicom_io import load_series
    except ImportError:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        return reader.Execute()
    return load_series(folder)


def test_same_seed_same_bytes_other_seed_differs():
    first, again, other = (make_phantom(seed, n_tumors=2, **FAST) for seed in (11, 11, 12))
    assert all(np.array_equal(a, b) for a, b in zip(arrays(first), arrays(again), strict=True))
    assert first.tumors == again.tumors
    assert first.ct.GetOrigin() == again.ct.GetOrigin()
    ct, other_ct = arrays(first)[0], arrays(other)[0]
    assert ct.shape != other_ct.shape or not np.array_equal(ct, other_ct)
    assert first.tumors != other.tumors


def test_image_types_and_grid(small_phantom):
    ct, labels = small_phantom.ct, small_phantom.labels
    assert ct.GetPixelID() == sitk.sitkInt16 and labels.GetPixelID() == sitk.sitkUInt8
    assert ct.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert labels.GetSize() == ct.GetSize() and labels.GetOrigin() == ct.GetOrigin()
    assert labels.GetSpacing() == ct.GetSpacing()
    assert set(np.unique(arrays(small_phantom)[1])) == {0, 1, 2}
    size, spacing = ct.GetSize(), ct.GetSpacing()
    assert size[:2] == (128, 128) and spacing[2] == 5.0
    assert 360.0 <= size[0] * spacing[0] <= 460.0  # the field of view of a 512 matrix at 0.7-0.9 mm
    assert 200.0 <= (size[2] - 1) * spacing[2] <= 250.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_drawn_geometry_and_adult_liver_volume(seed):
    phantom = make_phantom(seed, size_xy=96, n_tumors=0)
    size, spacing = phantom.ct.GetSize(), phantom.ct.GetSpacing()
    assert 360.0 <= size[0] * spacing[0] <= 460.0
    assert spacing[2] in SLICE_THICKNESSES_MM
    assert 200.0 <= (size[2] - 1) * spacing[2] <= 250.0
    assert 1200.0 <= phantom.liver_volume_ml() <= 1800.0
    assert phantom.tumor_volume_ml() == 0.0


def test_anatomy_is_in_mm_whatever_the_matrix():
    coarse = make_phantom(4, size_xy=64, slice_thickness_mm=5.0, n_tumors=0)
    fine = make_phantom(4, size_xy=160, slice_thickness_mm=2.5, n_tumors=0)
    assert fine.ct.GetSpacing()[0] == pytest.approx(coarse.ct.GetSpacing()[0] * 64 / 160)
    assert fine.liver_volume_ml() == pytest.approx(coarse.liver_volume_ml(), rel=0.04)
    centroids = []
    for phantom in (coarse, fine):
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(sitk.Cast(phantom.labels > 0, sitk.sitkUInt8))
        centroids.append(np.array(stats.GetCentroid(1)))
    assert np.linalg.norm(centroids[0] - centroids[1]) < 3.0


def test_given_spacing_thickness_and_slices_are_used():
    phantom = make_phantom(5, size_xy=48, spacing_xy_mm=7.0, slice_thickness_mm=8.0, n_slices=30, n_tumors=0)
    assert phantom.ct.GetSize() == (48, 48, 30)
    assert phantom.ct.GetSpacing() == pytest.approx((7.0, 7.0, 8.0))
    labels = arrays(phantom)[1]
    liver_slices = np.nonzero(labels.any(axis=(1, 2)))[0]
    assert abs(liver_slices[0] - (29 - liver_slices[-1])) <= 2  # centred on the liver


@pytest.mark.parametrize("bad", [{"size_xy": 8}, {"n_slices": 0}, {"n_tumors": -1}])
def test_invalid_arguments_are_refused(bad):
    with pytest.raises(ValueError, match="make_phantom"):
        make_phantom(0, **{**FAST, **bad})


def test_liver_on_the_patient_right_under_the_diaphragm(small_phantom):
    ct, labels = arrays(small_phantom)
    body = ndimage.binary_fill_holes(ct > -500)
    z, y, x = np.nonzero(labels > 0)
    bz, by, bx = np.nonzero(body)
    spacing = small_phantom.ct.GetSpacing()
    assert (x.mean() - bx.mean()) * spacing[0] < -40.0  # LPS: low x is the patient's right
    assert z.max() >= 0.75 * ct.shape[0]  # upper abdomen: dome near the top, lung bases above it
    top = ct[-1][ndimage.binary_fill_holes(ct[-1] > -500)]
    assert np.mean(top < -700) > 0.15  # lung bases in the top slice


def test_tissue_hu(small_phantom):
    ct, labels = arrays(small_phantom)
    ct = ct.astype(float)
    liver = ndimage.binary_erosion(labels == 1, iterations=1)
    assert 100.0 <= ct[liver].mean() <= 135.0
    assert ct[labels == 2].mean() < ct[liver].mean() - 25.0
    corners = np.concatenate([ct[:, :6, :6].ravel(), ct[:, :6, -6:].ravel()])
    assert abs(corners.mean() + 1000.0) < 5.0 and 6.0 < corners.std() < 20.0  # air, with the CT noise
    body = ndimage.binary_fill_holes(ct > -500) & (labels == 0)
    histogram, edges = np.histogram(ct[body & (ct > -250) & (ct < -20)], bins=23, range=(-250, -20))
    assert -130.0 <= edges[np.argmax(histogram)] <= -80.0  # the fat peak
    assert ct[body].max() > 500.0  # bone
    hu = small_phantom.tissue_hu
    assert 100 <= hu["liver"] <= 120 and hu["fat"] < -85 and 150 <= hu["portal"] <= 185 and hu["aorta"] >= 170


def test_tumors_are_inside_the_liver_and_measured(small_phantom):
    ct, labels = arrays(small_phantom)
    assert len(small_phantom.tumors) == 3
    components, n_components = ndimage.label(labels == 2, np.ones((3, 3, 3)))
    assert 1 <= n_components <= 3
    liver = labels == 1
    for index in range(1, n_components + 1):  # every tumor lies in liver parenchyma
        assert (ndimage.binary_dilation(components == index) & liver).any()
    for tumor in small_phantom.tumors:
        assert 5.0 <= tumor.diameter_mm <= 60.0 and tumor.kind in ("hypodense", "rim")
        index = small_phantom.labels.TransformPhysicalPointToIndex(tumor.center_mm)
        assert small_phantom.labels[index] == 2
        assert 0.0 < tumor.volume_ml < np.pi / 6 * (tumor.diameter_mm / 10.0) ** 3 * 1.8
    total = sum(tumor.volume_ml for tumor in small_phantom.tumors)
    assert total == pytest.approx(small_phantom.tumor_volume_ml(), abs=0.01)
    assert small_phantom.tumor_volume_ml() == pytest.approx(
        (labels == 2).sum() * voxel_ml(small_phantom.labels)
    )


def test_rim_vessel_and_surface_tumors_occur(small_phantom):
    tumors = list(small_phantom.tumors)
    for seed in (1, 7):
        tumors += make_phantom(seed, n_tumors=3, size_xy=96, slice_thickness_mm=5.0).tumors
    assert any(t.kind == "rim" for t in tumors) and any(t.kind == "hypodense" for t in tumors)
    assert any(t.touches_vessel for t in tumors) and any(not t.touches_vessel for t in tumors)
    assert any(t.touches_surface for t in tumors) and any(not t.touches_surface for t in tumors)
    assert max(t.diameter_mm for t in tumors) > 30.0 and min(t.diameter_mm for t in tumors) < 20.0


def test_rim_tumor_has_a_bright_rim_and_dark_core(small_phantom):
    ct, labels = arrays(small_phantom)
    rim = next(t for t in small_phantom.tumors if t.kind == "rim" and t.diameter_mm > 25)
    k, j, i = small_phantom.ct.TransformPhysicalPointToIndex(rim.center_mm)[::-1]
    tumor = ndimage.label(labels == 2)[0]
    mask = tumor == tumor[k, j, i]
    core = ndimage.binary_erosion(mask, iterations=2)
    assert ct[core].mean() < small_phantom.tissue_hu["liver"] - 30.0
    assert ct[mask & ~ndimage.binary_erosion(mask)].max() > small_phantom.tissue_hu["liver"]


def test_written_files_match_the_phantom(small_phantom, small_phantom_dicom):
    paths = small_phantom_dicom
    assert sorted(p.name for p in paths["dicom"].iterdir())[0] == "IM0000.dcm"
    loaded = read_series(paths["dicom"])
    assert loaded.GetSize() == small_phantom.ct.GetSize()
    np.testing.assert_allclose(loaded.GetOrigin(), small_phantom.ct.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(loaded.GetSpacing(), small_phantom.ct.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(loaded.GetDirection(), small_phantom.ct.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(loaded), arrays(small_phantom)[0])
    truth = sitk.ReadImage(str(paths["truth"]))
    assert truth.GetPixelID() == sitk.sitkUInt8
    assert (
        truth.GetOrigin() == small_phantom.ct.GetOrigin()
        and truth.GetSpacing() == small_phantom.ct.GetSpacing()
    )
    assert np.array_equal(sitk.GetArrayFromImage(truth), arrays(small_phantom)[1])
    summary = json.loads(paths["json"].read_text())
    counts = np.bincount(sitk.GetArrayFromImage(truth).ravel(), minlength=3) * voxel_ml(truth)
    assert summary["seed"] == small_phantom.seed and summary["labels"] == {
        "0": "background",
        "1": "liver",
        "2": "liver tumor",
    }
    assert summary["liver_volume_ml"] == pytest.approx(counts[1] + counts[2], abs=1e-3)
    assert summary["tumor_volume_ml"] == pytest.approx(counts[2], abs=1e-3)
    assert sum(t["volume_ml"] for t in summary["tumors"]) == pytest.approx(counts[2], abs=0.01)
    assert [tuple(t["center_mm"]) for t in summary["tumors"]] == [t.center_mm for t in small_phantom.tumors]


def test_same_phantom_same_uids(tmp_path, small_phantom, small_phantom_dicom):
    import pydicom

    again = write_phantom(small_phantom, tmp_path / "again")
    first = pydicom.dcmread(small_phantom_dicom["dicom"] / "IM0000.dcm", stop_before_pixels=True)
    second = pydicom.dcmread(again["dicom"] / "IM0000.dcm", stop_before_pixels=True)
    assert (
        first.SeriesInstanceUID == second.SeriesInstanceUID
        and first.StudyInstanceUID == second.StudyInstanceUID
    )
    other = write_phantom(make_phantom(3, n_tumors=0, **FAST), tmp_path / "other")
    third = pydicom.dcmread(other["dicom"] / "IM0000.dcm", stop_before_pixels=True)
    assert third.SeriesInstanceUID != first.SeriesInstanceUID


def test_cli_writes_the_phantom_and_prints_one_json_line(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "LiverTumorSegLib.cli",
            "phantom",
            "--out",
            str(out),
            "--seed",
            "3",
            "--size",
            "64",
            "--slice-thickness-mm",
            "5",
            "--tumors",
            "2",
        ],
        capture_output=True,
        text=True, encoding="utf-8",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    expected = make_phantom(
        3, size_xy=64, slice_thickness_mm=5.0, n_tumors=2
    )  # same bytes in another process
    assert summary["liver_volume_ml"] == pytest.approx(expected.liver_volume_ml(), abs=1e-3)
    assert len(summary["tumors"]) == len(expected.tumors) == 2
    assert summary["size"] == [64, 64, expected.ct.GetSize()[2]]
    truth = sitk.ReadImage(summary["truth"])
    assert np.array_equal(sitk.GetArrayFromImage(truth), arrays(expected)[1])
    assert len(list((out / "dicom").glob("*.dcm"))) == expected.ct.GetSize()[2]


@pytest.mark.slow
def test_default_phantom_size_spacing_and_speed():
    started = time.perf_counter()
    phantom = make_phantom(42)
    elapsed = time.perf_counter() - started
    size, spacing = phantom.ct.GetSize(), phantom.ct.GetSpacing()
    assert size[:2] == (512, 512) and 0.7 <= spacing[0] <= 0.9 and spacing[2] in SLICE_THICKNESSES_MM
    assert 1200.0 <= phantom.liver_volume_ml() <= 1800.0
    assert elapsed < 20.0, f"default phantom took {elapsed:.1f} s"


def test_cli_refuses_invalid_arguments(tmp_path, capsys):
    from LiverTumorSegLib.cli import main

    assert main(["phantom", "--out", str(tmp_path / "bad"), "--size", "8"]) == 2
    assert "size_xy=8" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
