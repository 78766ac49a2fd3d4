"""DICOM CT input (``dicom_io``): every good and bad input case, built with ``dicom_write``."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, RLELossless, generate_uid

from LiverTumorSegLib import cli
from LiverTumorSegLib.io.dicom_io import DicomInputError, DicomInputWarning, load_series, scan_folder
from LiverTumorSegLib.io.dicom_write import write_ct_series, write_enhanced_ct

SPACING_MM = (0.7, 0.8, 2.5)
ORIGIN_MM = (-10.3, 20.1, 30.5)


def ct_image(slices: int = 6, seed: int = 0, low: int = -1024, high: int = 2000) -> sitk.Image:
    """(x, y, z) = (24, 20, ``slices``) int16 HU image with random values in [low, high)."""
    values = np.random.default_rng(seed).integers(low, high, (slices, 20, 24)).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(SPACING_MM)
    image.SetOrigin(ORIGIN_MM)
    return image


def oblique(image: sitk.Image) -> sitk.Image:
    """``image`` with a right-handed oblique direction (rotations 20, -15, 30 degrees about x, y, z)."""
    cx, sx, cy, sy, cz, sz = (f(np.radians(a)) for a in (20, -15, 30) for f in (np.cos, np.sin))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rotated = sitk.Image(image)
    rotated.SetDirection((rz @ ry @ rx).ravel())
    return rotated


def assert_same_image(loaded: sitk.Image, expected: sitk.Image, tol_mm: float = 1e-9) -> None:
    assert np.array_equal(sitk.GetArrayViewFromImage(loaded), sitk.GetArrayViewFromImage(expected))
    assert loaded.GetSize() == expected.GetSize()
    np.testing.assert_allclose(loaded.GetOrigin(), expected.GetOrigin(), atol=tol_mm, rtol=0)
    np.testing.assert_allclose(loaded.GetSpacing(), expected.GetSpacing(), atol=tol_mm, rtol=0)
    np.testing.assert_allclose(loaded.GetDirection(), expected.GetDirection(), atol=1e-9, rtol=0)


def load_quietly(folder, *args, **kwargs) -> sitk.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DicomInputWarning)  # no warning expected
        return load_series(folder, *args, **kwargs)


def edit(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


# --- good input -----------------------------------------------------------------------------------------


def test_axial_series_loads_exact_hu_and_geometry(tmp_path):
    image = ct_image()
    write_ct_series(image, tmp_path)
    loaded = load_quietly(tmp_path)
    assert loaded.GetPixelID() == sitk.sitkInt16
    assert_same_image(loaded, image)


def test_oblique_series_keeps_direction(tmp_path):
    image = oblique(ct_image())
    write_ct_series(image, tmp_path)
    assert_same_image(load_quietly(tmp_path), image, tol_mm=1e-9)


def test_slices_ordered_along_normal_not_by_file_name_or_instance_number(tmp_path):
    image = oblique(ct_image(slices=8))
    files = write_ct_series(image, tmp_path / "dicom")
    shuffled = files[:]
    random.Random(3).shuffle(shuffled)
    for number, path in enumerate(shuffled):  # file names and instance numbers in shuffled order
        edit(path, InstanceNumber=number + 1)
        path.rename(path.with_name(f"X{number:03d}.dcm"))
    assert_same_image(load_quietly(tmp_path / "dicom"), image)


def test_per_slice_rescale_is_applied_and_integer_hu_stay_int16(tmp_path):
    image = ct_image(slices=6)
    uid = generate_uid()
    write_ct_series(image[:, :, :3], tmp_path, series_uid=uid, file_name_pattern="A{index}.dcm")
    write_ct_series(
        image[:, :, 3:],
        tmp_path,
        series_uid=uid,
        rescale_slope=2.0,
        rescale_intercept=-1000.0,
        file_name_pattern="B{index}.dcm",
    )
    with pytest.warns(DicomInputWarning, match=r"RescaleSlope differs between slices \(1 in 3; 2 in 3; B0.dcm"):
        loaded = load_series(tmp_path)  # applied per slice, but named: unusual for a CT
    assert loaded.GetPixelID() == sitk.sitkInt16
    expected = sitk.GetArrayFromImage(image)
    expected[3:] = np.rint((expected[3:] + 1000) / 2) * 2 - 1000  # what slope 2 can store
    assert np.array_equal(sitk.GetArrayViewFromImage(loaded), expected)


def test_fractional_rescale_gives_float32(tmp_path):
    image = sitk.Cast(ct_image(), sitk.sitkFloat32) * 0.5  # HU in steps of 0.5
    write_ct_series(image, tmp_path, rescale_slope=0.5, rescale_intercept=-1024.0)
    loaded = load_quietly(tmp_path)
    assert loaded.GetPixelID() == sitk.sitkFloat32
    assert_same_image(loaded, image)


def test_single_slice_series_takes_spacing_from_slice_thickness(tmp_path):
    image = ct_image(slices=1)
    image.SetSpacing((0.7, 0.8, 3.0))
    write_ct_series(image, tmp_path, extra_tags={"SpacingBetweenSlices": None})
    loaded = load_quietly(tmp_path)
    assert loaded.GetSize() == (24, 20, 1)
    assert loaded.GetSpacing() == pytest.approx((0.7, 0.8, 3.0), abs=1e-12)


def test_enhanced_ct_equals_single_frame_series(tmp_path):
    image = oblique(ct_image(slices=7))
    write_ct_series(image, tmp_path / "single")
    write_enhanced_ct(image, tmp_path / "multi" / "enhanced.dcm")
    single, multi = load_quietly(tmp_path / "single"), load_quietly(tmp_path / "multi")
    assert_same_image(multi, single)
    assert_same_image(multi, image)


@pytest.mark.parametrize(
    "syntax", [JPEGLosslessSV1, JPEG2000Lossless, RLELossless], ids=lambda u: u.name[:12]
)
@pytest.mark.parametrize("intercept", [-1024.0, 0.0], ids=["uint16", "int16"])
def test_compressed_transfer_syntaxes_load_exactly(tmp_path, syntax, intercept):
    image = ct_image(slices=3, low=-1024 if intercept else -2000, high=3000)
    files = write_ct_series(image, tmp_path, transfer_syntax_uid=syntax, rescale_intercept=intercept)
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert header.file_meta.TransferSyntaxUID == syntax
    assert header.PixelRepresentation == (1 if intercept == 0 else 0)
    assert_same_image(load_quietly(tmp_path), image)


def test_enhanced_ct_compressed_loads_exactly(tmp_path):
    image = ct_image(slices=4)
    write_enhanced_ct(image, tmp_path / "enhanced.dcm", transfer_syntax_uid=RLELossless)
    assert_same_image(load_quietly(tmp_path), image)


def test_bits_stored_below_16_are_masked_or_sign_extended(tmp_path):
    signed = ct_image(slices=2, low=-2048, high=2048)
    write_ct_series(
        signed, tmp_path / "signed", rescale_intercept=0.0, extra_tags={"BitsStored": 12, "HighBit": 11}
    )
    assert_same_image(load_quietly(tmp_path / "signed"), signed)
    unsigned = ct_image(slices=2, low=0, high=8192)
    write_ct_series(
        unsigned, tmp_path / "unsigned", rescale_intercept=0.0, extra_tags={"BitsStored": 12, "HighBit": 11}
    )
    loaded = sitk.GetArrayFromImage(load_quietly(tmp_path / "unsigned"))
    assert np.array_equal(loaded, sitk.GetArrayFromImage(unsigned) & 0x0FFF)  # bits 12-15 are not pixel value


def test_file_without_preamble_is_read(tmp_path):
    image = ct_image(slices=3)
    files = write_ct_series(image, tmp_path)
    ds = pydicom.dcmread(files[1])
    ds.preamble = None
    del ds.file_meta
    pydicom.dcmwrite(files[1], ds, implicit_vr=True, little_endian=True)
    assert files[1].read_bytes()[:2] == b"\x08\x00"
    assert_same_image(load_quietly(tmp_path), image)


def test_scan_folder_lists_series_recursively(tmp_path):
    write_ct_series(ct_image(slices=3), tmp_path / "a" / "ct", series_description="venous", patient_id="P1")
    enhanced_uid = generate_uid()
    write_enhanced_ct(
        ct_image(slices=5), tmp_path / "b" / "enh.dcm", series_uid=enhanced_uid, patient_id="P1"
    )
    series = scan_folder(tmp_path)
    assert [(s.num_instances, s.num_frames, s.modality) for s in series] == [(3, 3, "CT"), (1, 5, "CT")]
    assert series[1].series_uid == enhanced_uid
    record = series[0].to_json()
    assert record["series_description"] == "venous" and record["patient_id"] == "P1"
    assert record["folder"] == str(tmp_path / "a" / "ct")
    assert record["first_file"] == str(tmp_path / "a" / "ct" / "IM0000.dcm")
    assert "files" not in record and json.loads(json.dumps(record)) == record


# --- several series, modality ---------------------------------------------------------------------------


def _two_series(folder: Path) -> tuple[sitk.Image, str, sitk.Image, str]:
    big, small = ct_image(slices=6, seed=1), ct_image(slices=3, seed=2)
    big_uid, small_uid = generate_uid(), generate_uid()
    write_ct_series(
        big, folder, series_uid=big_uid, series_description="big", file_name_pattern="B{index}.dcm"
    )
    write_ct_series(
        small, folder, series_uid=small_uid, series_description="small", file_name_pattern="S{index}.dcm"
    )
    return big, big_uid, small, small_uid


def test_several_series_series_uid_chooses(tmp_path):
    _, _, small, small_uid = _two_series(tmp_path)
    assert_same_image(load_quietly(tmp_path, small_uid), small)


def test_several_series_default_is_largest_ct_with_warning(tmp_path):
    big, big_uid, _, small_uid = _two_series(tmp_path)
    with pytest.warns(DicomInputWarning, match="most slices") as caught:
        loaded = load_series(tmp_path)
    assert_same_image(loaded, big)
    message = str(caught[0].message)
    assert f"loading the CT series with the most slices {big_uid}" in message
    assert f"not loaded: {small_uid}" in message


def test_unknown_series_uid_lists_available(tmp_path):
    _, big_uid, _, small_uid = _two_series(tmp_path)
    with pytest.raises(DicomInputError, match="series 1.2.3 not found") as error:
        load_series(tmp_path, "1.2.3")
    assert big_uid in str(error.value) and small_uid in str(error.value) and str(tmp_path) in str(error.value)


def test_non_ct_modality_is_refused(tmp_path):
    uid = generate_uid()
    write_ct_series(ct_image(slices=3), tmp_path, modality="MR", series_uid=uid)
    with pytest.raises(DicomInputError, match=r"no CT series in .*: found only .*\(MR, 3 slice"):
        load_series(tmp_path)
    with pytest.raises(DicomInputError, match=f"series {uid} in .* has modality MR, not CT"):
        load_series(tmp_path, uid)


# --- bad geometry ---------------------------------------------------------------------------------------


def test_inconsistent_rows_columns_name_the_files(tmp_path):
    uid = generate_uid()
    write_ct_series(ct_image(slices=4), tmp_path, series_uid=uid)
    other = sitk.Image(30, 20, 1, sitk.sitkInt16)
    other.SetSpacing(SPACING_MM)
    other.SetOrigin((ORIGIN_MM[0], ORIGIN_MM[1], ORIGIN_MM[2] + 4 * SPACING_MM[2]))
    write_ct_series(other, tmp_path, series_uid=uid, file_name_pattern="ODD{index}.dcm")
    with pytest.raises(
        DicomInputError,
        match=r"inconsistent rows x columns within series .*: 20 x 24 in 4 slice\(s\), but 20 x 30 in ODD0.dcm",
    ):
        load_series(tmp_path)


def test_inconsistent_pixel_spacing_names_the_files(tmp_path):
    files = write_ct_series(ct_image(slices=4), tmp_path)
    edit(files[2], PixelSpacing=[0.8, 0.75])
    with pytest.raises(
        DicomInputError,
        match=r"inconsistent pixel spacing .*0\.8 x 0\.7 mm in 3 slice\(s\), but 0\.8 x 0\.75 mm in IM0002.dcm",
    ):
        load_series(tmp_path)


def test_inconsistent_orientation_names_the_files(tmp_path):
    files = write_ct_series(ct_image(slices=4), tmp_path)
    edit(files[1], ImageOrientationPatient=[1, 0, 0, 0, 0.9998, 0.0175])
    with pytest.raises(
        DicomInputError, match=r"inconsistent image orientation .* in IM0001.dcm \(1 slice\(s\) differ\)"
    ):
        load_series(tmp_path)


def test_missing_slice_error_gives_gap_and_expected_spacing(tmp_path):
    files = write_ct_series(ct_image(slices=6), tmp_path)
    files[3].unlink()
    with pytest.raises(DicomInputError) as error:
        load_series(tmp_path)
    message = str(error.value)
    assert "missing slices or non-uniform slice spacing" in message
    assert "expected spacing 2.500 mm" in message
    assert (
        "gap 5.000 mm between IM0002.dcm (35.500 mm) and IM0004.dcm (40.500 mm): 1 slice(s) missing"
        in message
    )


def test_missing_slice_resampled_on_request(tmp_path):
    image = ct_image(slices=6)
    files = write_ct_series(image, tmp_path)
    files[3].unlink()
    with pytest.warns(
        DicomInputWarning,
        match=r"resampled .* from 5 irregularly spaced slices onto 6 slices 2\.5000 mm apart",
    ):
        loaded = load_series(tmp_path, resample_nonuniform=True)
    assert loaded.GetPixelID() == sitk.sitkFloat32
    expected = sitk.GetArrayFromImage(image).astype(np.float32)
    expected[3] = (expected[2] + expected[4]) / 2  # linear in HU between the neighbours
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(loaded), expected, atol=1e-3)
    np.testing.assert_allclose(loaded.GetSpacing(), SPACING_MM, atol=1e-9)
    np.testing.assert_allclose(loaded.GetOrigin(), ORIGIN_MM, atol=1e-9)


def test_non_uniform_spacing_error_and_resampling(tmp_path):
    image = ct_image(slices=5)
    files = write_ct_series(image, tmp_path)
    edit(files[2], ImagePositionPatient=[ORIGIN_MM[0], ORIGIN_MM[1], ORIGIN_MM[2] + 2 * 2.5 + 1.0])
    with pytest.raises(
        DicomInputError, match=r"gap 3\.500 mm between IM0001.dcm .* and IM0002.dcm .*: non-uniform spacing"
    ):
        load_series(tmp_path)
    with pytest.warns(DicomInputWarning, match="irregularly spaced"):
        loaded = load_series(tmp_path, resample_nonuniform=True)
    values, stored = sitk.GetArrayViewFromImage(loaded), sitk.GetArrayFromImage(image).astype(np.float32)
    assert loaded.GetSize() == (24, 20, 5)
    np.testing.assert_allclose(values[[0, 1, 4]], stored[[0, 1, 4]], atol=1e-3)
    # slice 2 of the grid (5.0 mm) lies between the slices at 2.5 mm and 6.0 mm: weight 2.5 / 3.5
    np.testing.assert_allclose(values[2], stored[1] + (stored[2] - stored[1]) * (2.5 / 3.5), atol=1e-2)


def test_duplicate_slice_positions_are_refused(tmp_path):
    files = write_ct_series(ct_image(slices=4), tmp_path)
    copy = tmp_path / "copy.dcm"
    shutil.copy(files[1], copy)
    edit(copy, SOPInstanceUID=generate_uid())
    with pytest.raises(
        DicomInputError,
        match=r"duplicate slice positions .*\((IM0001.dcm = copy.dcm|copy.dcm = IM0001.dcm)\)",
    ):
        load_series(tmp_path)


def test_gantry_tilt_from_sheared_positions(tmp_path):
    image = ct_image(slices=5)
    tilt = np.radians(15)
    image.SetDirection((1, 0, 0, 0, 1, np.sin(tilt), 0, 0, np.cos(tilt)))  # slices drift along y
    write_ct_series(image, tmp_path)
    with pytest.raises(DicomInputError, match=r"gantry tilt .*about 15\.00 degrees"):
        load_series(tmp_path)


def test_gantry_tilt_tag_is_refused(tmp_path):
    write_ct_series(ct_image(slices=3), tmp_path, extra_tags={"GantryDetectorTilt": 12.5})
    with pytest.raises(DicomInputError, match=r"gantry tilt of 12\.5 degrees \(Gantry/Detector Tilt\)"):
        load_series(tmp_path)


# --- unreadable files, empty folders --------------------------------------------------------------------


def test_non_dicom_files_are_skipped_in_one_warning(tmp_path):
    image = ct_image(slices=3)
    files = write_ct_series(image, tmp_path)
    (tmp_path / "notes.txt").write_text("not DICOM\n")
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "broken.dcm").write_bytes(files[0].read_bytes()[:300])
    with pytest.warns(DicomInputWarning) as caught:
        loaded = load_series(tmp_path)
    assert_same_image(loaded, image)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"skipped 3 file(s) in {tmp_path}")
    assert (
        "notes.txt (not DICOM)" in message and "empty.dcm (not DICOM)" in message and "broken.dcm" in message
    )


def test_empty_folder_and_folder_without_dicom_are_errors(tmp_path):
    with pytest.raises(DicomInputError, match=r"no DICOM image files in .* \(0 file\(s\) looked at\)"):
        load_series(tmp_path)
    (tmp_path / "readme.txt").write_text("hello")
    with (
        pytest.warns(DicomInputWarning, match="readme.txt"),
        pytest.raises(DicomInputError, match="no DICOM image"),
    ):
        scan_folder(tmp_path)
    with pytest.raises(DicomInputError, match="no such folder"):
        load_series(tmp_path / "missing")


def test_truncated_pixel_data_names_the_file(tmp_path):
    files = write_ct_series(ct_image(slices=3), tmp_path)
    files[1].write_bytes(files[1].read_bytes()[:-200])
    with pytest.raises(DicomInputError, match=r"IM0001.dcm"):
        load_series(tmp_path)


# --- command line ---------------------------------------------------------------------------------------


def test_cli_list_prints_one_json_object_per_series(tmp_path, capsys):
    _, big_uid, _, small_uid = _two_series(tmp_path)
    assert cli.main(["dicom", "list", str(tmp_path)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(r["series_uid"], r["num_instances"], r["modality"]) for r in records} == {
        (big_uid, 6, "CT"),
        (small_uid, 3, "CT"),
    }


def test_cli_convert_writes_nrrd(tmp_path, capsys):
    _, _, small, small_uid = _two_series(tmp_path / "dicom")
    out = tmp_path / "out" / "ct.nrrd"
    assert (
        cli.main(["dicom", "convert", str(tmp_path / "dicom"), "--series", small_uid, "--out", str(out)]) == 0
    )
    assert capsys.readouterr().out.strip() == str(out)
    assert_same_image(sitk.ReadImage(str(out)), small, tol_mm=1e-6)


def test_cli_convert_errors_exit_2_with_one_line(tmp_path, capsys):
    files = write_ct_series(ct_image(slices=5), tmp_path / "dicom")
    files[2].unlink()
    out = tmp_path / "ct.nrrd"
    assert cli.main(["dicom", "convert", str(tmp_path / "dicom"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("livertumor dicom: error: missing slices") and not out.exists()
    assert (
        cli.main(["dicom", "convert", str(tmp_path / "dicom"), "--resample-nonuniform", "--out", str(out)])
        == 0
    )
    captured = capsys.readouterr()
    assert "livertumor dicom: warning: resampled" in captured.err and sitk.ReadImage(str(out)).GetSize() == (
        24,
        20,
        5,
    )


def test_cli_convert_in_a_subprocess(tmp_path):
    image = oblique(ct_image(slices=4))
    write_ct_series(image, tmp_path / "dicom")
    out = tmp_path / "ct.nrrd"
    command = [
        sys.executable,
        "-m",
        "LiverTumorSegLib.cli",
        "dicom",
        "convert",
        str(tmp_path / "dicom"),
        "--out",
        str(out),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, encoding="utf-8", timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert_same_image(sitk.ReadImage(str(out)), image, tol_mm=1e-6)
    empty = subprocess.run(
        [*command[:5], str(tmp_path / "nothing"), "--out", str(out)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    assert empty.returncode == 2 and "no such folder" in empty.stderr
