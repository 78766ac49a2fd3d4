"""Choosing the series to segment in a multiphase study: portal venous axial CT, not the one with the most slices."""

from __future__ import annotations

import pytest

from LiverTumorSegLib.io.series_choice import SeriesMetadata, choose_series, phase_of

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def ct(uid, description, slices=120, thickness=3.0, **fields) -> SeriesMetadata:
    return SeriesMetadata(uid, "CT", description, slice_count=slices, slice_thickness_mm=thickness,
                          orientation=fields.pop("orientation", AXIAL), **fields)


MULTIPHASE = [
    ct("1", "Topogram", slices=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
    ct("2", "Nativ 5mm", slices=60, thickness=5.0),
    ct("3", "Arterial 0.6mm", slices=500, thickness=0.6),
    ct("4", "Arterial 3mm", slices=100),
    ct("5", "PV 0.6mm", slices=500, thickness=0.6),
    ct("6", "Portal venous 3mm", slices=100),
    ct("7", "PV Cor MPR 3mm", slices=160, orientation=CORONAL, image_type=("DERIVED", "SECONDARY")),
    SeriesMetadata("8", "SR", "Dose report", slice_count=1),
]


def test_portal_venous_axial_3mm_wins_over_the_series_with_the_most_slices():
    choice = choose_series(MULTIPHASE)
    assert choice.best.series_uid == "6"
    assert max(MULTIPHASE, key=lambda s: s.slice_count).series_uid == "3"  # what "most slices" would have taken
    assert choice.reason.startswith("Chosen: Portal venous 3mm: portal venous (from the series description)")
    assert "Arterial 0.6mm" in choice.reason and "Topogram" not in choice.reason
    order = [item.series.series_uid for item in choice.ranked]
    assert order[:4] == ["6", "5", "7", "4"], order  # thin PV, then the PV reformat, before any arterial series
    assert {item.series.series_uid for item in choice.ranked if item.key is None} == {"1", "8"}


@pytest.mark.parametrize("series, phase", [
    (ct("a", "Abdomen", bolus_start_time="101500", acquisition_time="101610"), "portal venous"),
    (ct("a", "Abdomen", bolus_start_time="101500.5", acquisition_time="101530"), "arterial"),
    (ct("a", "Abdomen", bolus_start_time="235930", acquisition_time="000400"), "delayed"),  # past midnight
    (ct("a", "Abdomen", contrast_agent="Iomeprol"), "contrast, phase unknown"),
    (ct("a", "Abdomen"), "unknown"),
    (ct("a", "Abdomen w/o contrast"), "non-contrast"),
    (ct("a", "", protocol="Liver 3-phase / equilibrium"), "delayed"),
    (ct("a", "Two-phase liver, venous"), "portal venous"),
])
def test_phase_from_description_timing_or_contrast_agent(series, phase):
    assert phase_of(series)[0] == phase


def test_no_ct_volume_says_why_and_a_non_portal_choice_warns():
    choice = choose_series([MULTIPHASE[0], MULTIPHASE[-1]])
    assert choice.best is None and "localizer" in choice.reason and "not CT" in choice.reason
    arterial_only = choose_series([ct("x", "Arterial 3mm"), ct("y", "Nativ 3mm")])
    assert arterial_only.best.series_uid == "x" and "check the phase" in arterial_only.reason


def test_picker_rows_start_with_the_choice_and_grey_out_what_cannot_be_loaded():
    from LiverTumorSegLib.io.series_choice import picker_rows

    rows = picker_rows(choose_series(MULTIPHASE))
    assert rows[0].series_uid == "6" and rows[0].selectable
    assert rows[0].cells == ("Portal venous 3mm", "CT", "100", "3", "portal venous")
    assert {row.series_uid for row in rows if not row.selectable} == {"1", "8"}
    assert "thin: noisier" in next(row.tooltip for row in rows if row.series_uid == "5")
