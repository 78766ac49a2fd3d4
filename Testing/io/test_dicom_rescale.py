"""DICOM rescaling faults of a broken PACS export: named by the loader, refused by the CT gate."""

from __future__ import annotations

import pytest
from hostile_inputs import phantom_ct, remove_rescale_tags, set_rescale_slope, write_dicom_series

from LiverTumorSegLib.core.plausibility import RESCALE_NOTE_KEY, ImplausibleInputError, check_ct
from LiverTumorSegLib.io.dicom_io import DicomInputError, DicomInputWarning, load_series


def test_slope_zero_is_refused_by_the_loader(tmp_path):
    folder = write_dicom_series(phantom_ct(), tmp_path / "slope0", set_rescale_slope("0"))
    with pytest.raises(DicomInputError, match=r"RescaleSlope is 0 in 47 of 47 files of series .* every voxel of "
                                              r"them would read -1024 HU"):
        load_series(folder)


def test_slope_zero_in_one_file_names_it(tmp_path):
    zero = set_rescale_slope("0")
    folder = write_dicom_series(phantom_ct(), tmp_path / "one", lambda ds, index: index == 7 and zero(ds, index))
    with pytest.raises(DicomInputError, match=r"RescaleSlope is 0 in 1 of 47 files \(IM0007.dcm\)"):
        load_series(folder)


def test_missing_rescale_tags_are_warned_about_and_named_by_the_gate(tmp_path):
    folder = write_dicom_series(phantom_ct(), tmp_path / "tags", remove_rescale_tags)
    with pytest.warns(DicomInputWarning, match="Rescale Slope/Intercept missing in 47 of 47 files"):
        image = load_series(folder)
    assert "missing in 47 of 47 files" in image.GetMetaData(RESCALE_NOTE_KEY)
    with pytest.raises(ImplausibleInputError, match=r"no air near -1000 HU.*\(Rescale Slope/Intercept missing in 47 "
                                                    r"of 47 files: stored values taken as HU\)"):
        check_ct(image, f"CT series in {folder}")


def test_an_implausible_slope_is_refused_by_the_gate_with_the_slope_named(tmp_path):
    folder = write_dicom_series(phantom_ct(), tmp_path / "slope1000", set_rescale_slope("1000"))
    with pytest.warns(DicomInputWarning, match="RescaleSlope 1000"):
        image = load_series(folder)
    with pytest.raises(ImplausibleInputError, match=r"outside -1100..3100 HU.*RescaleSlope 1000"):
        check_ct(image, "series")


def test_a_correct_series_loads_quietly_without_a_note(tmp_path, recwarn):
    image = load_series(write_dicom_series(phantom_ct(), tmp_path / "good"))
    assert not image.HasMetaDataKey(RESCALE_NOTE_KEY) and check_ct(image, "series") == []
    assert not [w for w in recwarn if issubclass(w.category, DicomInputWarning)]
