"""FLR figures (hand-computed), verdicts, ``FLRCalculator`` on a box phantom, and ``livertumor flr``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.cli import main
from LiverTumorSegLib.core.flr import (
    FIGURE_KEYS,
    FLRCalculator,
    compute_figures,
    compute_flr,
    flr_verdict,
    min_sflr,
    mosteller_bsa_m2,
    vauthey_telv_ml,
)
from LiverTumorSegLib.core.resection import Plane

# Box phantom: spacing 0.5 x 1.0 x 2.0 mm (1 uL = 0.001 mL per voxel), origin (-5, 10, 20).
# Liver box x 2..11, y 1..8, z 1..6 (10 x 8 x 6 = 480 voxels) holding a 2 x 2 x 2 tumor (8 voxels):
# parenchyma 472 voxels = 0.472 mL, tumor 0.008 mL, total 0.480 mL.
SPACING = (0.5, 1.0, 2.0)
ORIGIN = (-5.0, 10.0, 20.0)


def _box_labels() -> sitk.Image:
    array = np.zeros((8, 10, 14), np.uint8)
    array[1:7, 1:9, 2:12] = 1
    array[2:4, 3:5, 4:6] = 2  # tumor at x index 4..5, y 3..4, z 2..3: left of the plane used below
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    return image


# The plane x = -1.25 mm resects x index 8..11: 4 x 8 x 6 = 192 parenchyma voxels (no tumor there).
PLANE = Plane((-1.25, 0.0, 0.0), (1.0, 0.0, 0.0))


def test_bsa_and_telv_hand_computed():
    bsa = mosteller_bsa_m2(170, 70)  # sqrt(11900 / 3600) = 1.81812
    assert bsa == pytest.approx(1.818, abs=5e-4)
    assert vauthey_telv_ml(bsa) == pytest.approx(1509.7, abs=0.1)  # -794.41 + 1267.28 * 1.81812
    assert mosteller_bsa_m2(180, 80) == pytest.approx(2.0)  # sqrt(14400 / 3600)
    with pytest.raises(ValueError, match="positive"):
        mosteller_bsa_m2(0, 70)
    with pytest.raises(ValueError, match="non-positive TELV"):
        vauthey_telv_ml(mosteller_bsa_m2(60, 5))


@pytest.mark.parametrize(
    ("condition", "minimum"), [("normal", 0.20), ("chemotherapy", 0.30), ("cirrhosis", 0.40)]
)
def test_verdict_boundaries(condition, minimum):
    assert min_sflr(condition) == minimum
    assert flr_verdict(minimum + 0.05, minimum) == "adequate"  # exactly 5 points above: adequate
    assert flr_verdict(minimum + 0.0499, minimum) == "borderline"
    assert flr_verdict(minimum, minimum) == "borderline"  # exactly at the minimum: still safe, borderline
    assert flr_verdict(minimum - 0.0001, minimum) == "inadequate"
    assert flr_verdict(1.0, minimum) == "adequate" and flr_verdict(0.0, minimum) == "inadequate"


def test_unknown_condition_and_half_given_patient_fail():
    with pytest.raises(ValueError, match="unknown liver condition 'fatty'"):
        min_sflr("fatty")
    with pytest.raises(ValueError, match="together"):
        compute_figures(
            voxel_volume_mm3=1.0, parenchyma_count=10, tumor_count=0, resected_count=0, height_cm=170
        )


def test_figures_keys_and_values_from_counts():
    figures = compute_figures(
        voxel_volume_mm3=1000.0,  # 1 mL voxels
        parenchyma_count=1200,
        tumor_count=300,
        resected_count=900,
        height_cm=170,
        weight_kg=70,
        condition="chemotherapy",
    )
    data = figures.to_dict()
    assert list(data)[: len(FIGURE_KEYS)] == list(FIGURE_KEYS)
    assert data["total_liver_ml"] == 1500.0 and data["tumor_ml"] == 300.0
    assert data["functional_liver_ml"] == 1200.0 and data["resected_ml"] == 900.0 and data["flr_ml"] == 300.0
    assert data["flr_ratio"] == pytest.approx(0.25)
    assert data["sflr"] == pytest.approx(300.0 / 1509.655, abs=1e-5)  # 0.1987 < 0.30
    assert data["min_sflr"] == 0.30 and data["verdict"] == "inadequate" and data["verdict_basis"] == "sflr"
    assert json.loads(json.dumps(data)) == data
    without_patient = compute_figures(
        voxel_volume_mm3=1000.0, parenchyma_count=1200, tumor_count=300, resected_count=900
    )
    data = without_patient.to_dict()
    assert data["bsa_m2"] is None and data["telv_ml"] is None and data["sflr"] is None
    assert data["verdict_basis"] == "flr_ratio" and data["verdict"] == "adequate"  # 0.25 >= 0.20 + 0.05


def test_box_phantom_plane_exact_ml():
    result = compute_flr(_box_labels(), planes=[PLANE])
    figures = result.figures
    assert figures.total_liver_ml == pytest.approx(0.480, abs=1e-12)
    assert figures.tumor_ml == pytest.approx(0.008, abs=1e-12)
    assert figures.functional_liver_ml == pytest.approx(0.472, abs=1e-12)
    assert figures.resected_ml == pytest.approx(0.192, abs=1e-12)
    assert figures.flr_ml == pytest.approx(0.280, abs=1e-12)
    assert figures.flr_ratio == pytest.approx(280 / 472)
    assert figures.verdict == "adequate" and figures.disconnected_pieces_ml == ()
    resected = sitk.GetArrayViewFromImage(result.resected)
    remnant = sitk.GetArrayViewFromImage(result.remnant)
    assert resected.sum() == 192 and remnant.sum() == 280
    assert result.resected.GetOrigin() == ORIGIN and result.remnant.GetSpacing() == SPACING


def test_no_mode_resects_nothing_and_combined_labelmap():
    labels = _box_labels()
    calculator = FLRCalculator.from_labelmap(labels)
    nothing = calculator.compute()
    assert nothing.figures.resected_ml == 0.0
    assert nothing.figures.flr_ml == nothing.figures.functional_liver_ml and nothing.figures.flr_ratio == 1.0
    combined = calculator.compute(planes=PLANE).combined_labelmap()
    array = sitk.GetArrayViewFromImage(combined)
    assert combined.GetPixelID() == sitk.sitkUInt8 and combined.GetOrigin() == ORIGIN
    assert np.bincount(array.ravel(), minlength=4).tolist() == [array.size - 480, 280, 192, 8]
    np.testing.assert_array_equal(array == 3, sitk.GetArrayViewFromImage(labels) == 2)


def test_margin_and_disconnected_figures():
    labels = _box_labels()
    calculator = FLRCalculator.from_labelmap(labels)
    # 1 mm margin around the 2x2x2 tumor (x 4..5, y 3..4, z 2..3): in each tumor slice x 2, 3 and 6, 7
    # (1.0 and 0.5 mm away) in the two tumor rows (8 voxels) and y 2, 5 (1 mm) in the two tumor columns
    # (4 voxels); diagonals are >= 1.118 mm away and the next slices 2 mm: 2 x 12 = 24 voxels = 0.024 mL.
    margin = calculator.compute(margin_mm=1.0)
    assert margin.figures.resected_ml == pytest.approx(0.024, abs=1e-12)
    assert margin.figures.to_dict()["disconnected_remnant_count"] == 0
    # A painted slab at x index 9 (48 voxels) cuts x 10..11 (96 voxels) off the main remnant.
    painted = sitk.GetArrayFromImage(labels) * 0
    painted[:, :, 9] = 1
    mask = sitk.GetImageFromArray(painted)
    mask.CopyInformation(labels)
    kept = calculator.compute(resection_mask=mask)
    assert kept.figures.resected_ml == pytest.approx(0.048, abs=1e-12)
    assert kept.figures.disconnected_pieces_ml == pytest.approx((0.096,))
    dropped = calculator.compute(resection_mask=mask, drop_disconnected=True)
    assert dropped.figures.resected_ml == pytest.approx(0.144, abs=1e-12)
    assert dropped.figures.flr_ml == pytest.approx(0.328, abs=1e-12)
    assert dropped.figures.to_dict()["disconnected_remnant_count"] == 1


def test_missing_liver_fails():
    empty = sitk.Image(4, 4, 4, sitk.sitkUInt8)
    with pytest.raises(ValueError, match="no liver parenchyma"):
        compute_flr(empty)


# ---- command line -------------------------------------------------------------------------------------


@pytest.fixture
def labels_path(tmp_path):
    path = tmp_path / "labels.nrrd"
    sitk.WriteImage(_box_labels(), str(path))
    return path


def test_cli_prints_figures_and_writes_labels(labels_path, tmp_path, capsys):
    out = tmp_path / "flr.nrrd"
    argv = ["flr", "--labels", str(labels_path), "--plane=-1.25,0,0,2,0,0", "--height-cm", "170"]
    argv += ["--weight-kg", "70", "--condition", "cirrhosis", "--out-labels", str(out)]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(FIGURE_KEYS) <= set(data)
    assert data["resected_ml"] == pytest.approx(0.192) and data["flr_ml"] == pytest.approx(0.280)
    assert data["bsa_m2"] == pytest.approx(1.818, abs=5e-4) and data["telv_ml"] == pytest.approx(
        1509.7, abs=0.1
    )
    assert data["min_sflr"] == 0.40 and data["verdict"] == "inadequate" and data["verdict_basis"] == "sflr"
    written = sitk.ReadImage(str(out))
    assert written.GetOrigin() == ORIGIN and written.GetSpacing() == SPACING
    assert np.bincount(sitk.GetArrayViewFromImage(written).ravel()).tolist()[1:] == [280, 192, 8]
    assert main(argv) == 2  # refuses to overwrite
    assert "--out-labels" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_cli_resection_mask_margin_and_drop(labels_path, tmp_path, capsys):
    painted = sitk.GetArrayFromImage(_box_labels()) * 0
    painted[:, :, 9] = 1
    mask = sitk.GetImageFromArray(painted)
    mask.SetSpacing(SPACING)
    mask.SetOrigin(ORIGIN)
    mask_path = tmp_path / "resection.nrrd"
    sitk.WriteImage(mask, str(mask_path))
    argv = ["flr", "--labels", str(labels_path), "--resection", str(mask_path), "--margin-mm", "1"]
    assert main([*argv, "--drop-disconnected"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["resected_ml"] == pytest.approx(0.048 + 0.024 + 0.096)  # slab + margin + cut-off piece
    assert data["disconnected_pieces_ml"] == pytest.approx([0.096]) and data["disconnected_dropped"] is True
    assert data["bsa_m2"] is None and data["verdict_basis"] == "flr_ratio"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--plane", "1,2,3"], "--plane"),
        (["--plane", "0,0,0,0,0,0"], "non-zero"),
        (["--height-cm", "170"], "--weight-kg"),
        (["--margin-mm", "-2"], "--margin-mm"),
    ],
)
def test_cli_argument_errors(labels_path, capsys, extra, needle):
    assert main(["flr", "--labels", str(labels_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_cli_file_errors(labels_path, tmp_path, capsys):
    missing = tmp_path / "missing.nrrd"
    assert main(["flr", "--labels", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    other_grid = sitk.Image(3, 3, 3, sitk.sitkUInt8)
    other_path = tmp_path / "other.nrrd"
    sitk.WriteImage(other_grid, str(other_path))
    assert main(["flr", "--labels", str(labels_path), "--resection", str(other_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(other_path) in err and "not on the grid" in err and len(err.splitlines()) == 1
    assert main(["flr", "--labels", str(other_path)]) == 2  # an empty labelmap: no liver
    assert "no liver parenchyma" in capsys.readouterr().err


def test_cli_subprocess(labels_path):
    command = [sys.executable, "-m", "LiverTumorSegLib.cli", "flr", "--labels", str(labels_path)]
    completed = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert completed.returncode == 0, completed.stderr
    data = json.loads(completed.stdout)
    assert data["resected_ml"] == 0.0 and data["flr_ratio"] == 1.0 and data["verdict"] == "adequate"
