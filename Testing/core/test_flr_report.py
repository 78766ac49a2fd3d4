"""FLR report rows (hand-computed figures) and the resection/remnant preview PNG."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from LiverTumorSegLib.core.flr import NOT_AVAILABLE, FLRCalculator, compute_figures, flr_rows, flr_table_rows
from LiverTumorSegLib.core.resection import Plane
from LiverTumorSegLib.io.preview import (
    PREVIEW_REMNANT,
    PREVIEW_RESECTION,
    PREVIEW_TUMOR,
    flr_preview_colors,
    write_flr_preview,
)


def _figures(**patient):
    # 10 mm^3 voxels: 1000 parenchyma voxels = 10 mL, 250 resected = 2.5 mL, 40 tumor = 0.4 mL.
    return compute_figures(
        voxel_volume_mm3=10.0,
        parenchyma_count=1000,
        tumor_count=40,
        resected_count=250,
        disconnected_counts=(7, 3),
        **patient,
    ).to_dict()


def test_rows_hand_computed_with_height_and_weight():
    rows = {name: (value, unit) for name, value, unit in flr_rows(_figures(height_cm=170, weight_kg=70))}
    assert rows["Total liver volume"] == ("10.4", "mL")
    assert rows["Tumor volume"] == ("0.4", "mL")
    assert rows["Functional liver volume"] == ("10.0", "mL")
    assert rows["Resected liver volume"] == ("2.5", "mL")
    assert rows["Future liver remnant (FLR)"] == ("7.5", "mL")
    assert rows["FLR ratio (FLR / functional liver volume)"] == ("75.0", "%")
    assert rows["Body surface area (Mosteller)"] == ("1.818", "m^2")
    assert rows["Total estimated liver volume (Vauthey)"] == ("1509.7", "mL")
    assert rows["Standardized FLR (FLR / TELV)"] == ("0.5", "%")  # 7.5 mL / 1509.7 mL = 0.497 %
    assert rows["Minimum safe FLR for the liver condition"] == ("20.0", "%")
    assert rows["Verdict"] == ("inadequate", "")
    assert rows["Verdict based on"] == ("sFLR", "")
    assert rows["Remnant pieces cut off the main remnant"] == ("2", "")
    assert rows["Volume of the cut-off remnant pieces"] == ("0.1", "mL")  # 10 voxels
    assert rows["Cut-off pieces counted as resected"] == ("no", "")


def test_rows_without_patient_size_and_key_order():
    table = flr_table_rows(_figures(condition="cirrhosis"))
    keys = [key for key, *_ in table]
    assert keys[:11] == [
        "total_liver_ml",
        "tumor_ml",
        "functional_liver_ml",
        "resected_ml",
        "flr_ml",
        "flr_ratio",
        "bsa_m2",
        "telv_ml",
        "sflr",
        "min_sflr",
        "verdict",
    ]
    values = {key: value for key, _, value, _ in table}
    assert values["bsa_m2"] == values["telv_ml"] == values["sflr"] == NOT_AVAILABLE
    assert values["min_sflr"] == "40.0" and values["verdict"] == "adequate"  # 0.75 >= 0.45
    assert values["verdict_basis"] == "FLR ratio" and values["condition"] == "cirrhosis"
    assert [row[1:] for row in table] == flr_rows(_figures(condition="cirrhosis"))
    incomplete = _figures()
    del incomplete["flr_ml"]
    with pytest.raises(ValueError, match="flr_ml"):
        flr_rows(incomplete)


def _phantom():
    """CT and labels on a small anisotropic grid: liver block with a tumor, cut by a plane."""
    labels_array = np.zeros((12, 40, 40), np.uint8)
    labels_array[2:10, 8:32, 6:34] = 1
    labels_array[4:8, 14:20, 10:16] = 2
    labels = sitk.GetImageFromArray(labels_array)
    labels.SetSpacing((2.0, 2.0, 4.0))
    labels.SetOrigin((-40.0, -40.0, -20.0))
    ct = sitk.Cast(labels, sitk.sitkInt16) * 30 + 20
    result = FLRCalculator.from_labelmap(labels).compute(planes=[Plane((0.5, 0.0, 0.0), (1.0, 0.0, 0.0))])
    return ct, result


def test_preview_shows_remnant_resection_and_tumor_in_distinct_colours(tmp_path):
    ct, result = _phantom()
    colors = flr_preview_colors()
    assert len({colors[PREVIEW_REMNANT], colors[PREVIEW_RESECTION], colors[PREVIEW_TUMOR]}) == 3
    paths = write_flr_preview(ct, result.remnant, result.resected, result.tumor, tmp_path, "abdomen")
    assert sorted(paths) == ["axial", "coronal", "sagittal"]
    assert paths["axial"] == tmp_path / "flr_axial.png"
    axial = np.asarray(Image.open(paths["axial"]).convert("RGB"))
    for name in (PREVIEW_REMNANT, PREVIEW_RESECTION, PREVIEW_TUMOR):
        hits = np.all(axial == np.array(colors[name], np.uint8), axis=2)
        assert hits.sum() > 20, f"{name} outline missing from the axial preview"
    # Radiological convention: the resection (patient left, LPS x > 0) is on the image's right half.
    resection_columns = np.nonzero(np.all(axial == np.array(colors[PREVIEW_RESECTION], np.uint8), axis=2))[1]
    assert np.median(resection_columns) > axial.shape[1] / 2
    without_tumor = write_flr_preview(ct, result.remnant, result.resected, None, tmp_path / "no_tumor")
    image = np.asarray(Image.open(without_tumor["axial"]).convert("RGB"))
    assert not np.all(image == np.array(colors[PREVIEW_TUMOR], np.uint8), axis=2).any()
