"""The CT series / Enhanced CT writer (``dicom_write``): headers, stored values, geometry tags."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, RLELossless

from LiverTumorSegLib.io.dicom_write import stored_values, write_ct_series, write_enhanced_ct


def image_with_geometry() -> sitk.Image:
    """(x, y, z) = (6, 4, 3), spacing 0.5 x 0.8 x 2.0 mm, oblique right-handed direction."""
    values = (np.arange(72).reshape(3, 4, 6) * 40 - 1024).astype(np.int16)  # -1024 .. 1816 HU
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.5, 0.8, 2.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    image.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))  # 30 degrees about the z axis
    return image


def test_series_headers(tmp_path):
    image = image_with_geometry()
    paths = write_ct_series(
        image,
        tmp_path,
        patient_id="P7",
        study_description="abdomen",
        series_description="venous",
        series_number=4,
    )
    assert [p.name for p in paths] == ["IM0000.dcm", "IM0001.dcm", "IM0002.dcm"]
    datasets = [pydicom.dcmread(p) for p in paths]
    first = datasets[0]
    assert first.file_meta.MediaStorageSOPClassUID == CTImageStorage == first.SOPClassUID
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert (first.PatientID, first.StudyDescription, first.SeriesDescription, first.SeriesNumber) == (
        "P7",
        "abdomen",
        "venous",
        4,
    )
    assert (first.Rows, first.Columns) == (4, 6)
    assert [float(v) for v in first.PixelSpacing] == [0.8, 0.5]  # row spacing (y) first
    assert float(first.SliceThickness) == float(first.SpacingBetweenSlices) == 2.0
    assert (first.RescaleType, first.WindowCenter, first.WindowWidth) == ("HU", 40, 350)
    assert first.StudyDate and first.StudyTime and first.StudyID and first.FrameOfReferenceUID
    uids = {ds.SOPInstanceUID for ds in datasets}
    assert len(uids) == 3 and all(pydicom.uid.UID(uid).is_valid for uid in uids)
    assert len({(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID) for ds in datasets}) == 1
    assert [ds.InstanceNumber for ds in datasets] == [1, 2, 3]
    direction = np.reshape(image.GetDirection(), (3, 3))
    np.testing.assert_allclose(
        [float(v) for v in first.ImageOrientationPatient], [*direction[:, 0], *direction[:, 1]]
    )
    for k, ds in enumerate(datasets):
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], position, atol=1e-12)
        assert float(ds.SliceLocation) == pytest.approx(position[2])
        hu = ds.pixel_array.astype(np.int32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(hu, sitk.GetArrayViewFromImage(image)[k])


def test_stored_values_choose_uint16_or_int16_and_round():
    hu = np.array([-1024.0, 0.0, 3000.0])
    stored, representation = stored_values(hu, 1.0, -1024.0)
    assert representation == 0 and stored.dtype == np.uint16 and stored.tolist() == [0, 1024, 4024]
    stored, representation = stored_values(hu - 100, 1.0, -1024.0)
    assert representation == 1 and stored.dtype == np.int16 and stored.tolist() == [-100, 924, 3924]
    stored, _ = stored_values(np.array([0.26, -0.26]), 0.5, 0.0)
    assert stored.tolist() == [1, -1]  # round((HU - intercept) / slope)
    with pytest.raises(ValueError, match="fit neither uint16 nor int16"):
        stored_values(np.array([-40000.0, 40000.0]), 1.0, 0.0)


def test_extra_tags_override_and_unknown_keyword_fails(tmp_path):
    paths = write_ct_series(
        image_with_geometry(), tmp_path, extra_tags={"GantryDetectorTilt": 7.5, "KVP": 120}
    )
    ds = pydicom.dcmread(paths[0])
    assert float(ds.GantryDetectorTilt) == 7.5 and float(ds.KVP) == 120
    with pytest.raises(ValueError, match="'NotATag' is not a DICOM keyword"):
        write_ct_series(image_with_geometry(), tmp_path / "x", extra_tags={"NotATag": 1})


def test_rejects_non_3d_images(tmp_path):
    with pytest.raises(ValueError, match="expected a 3D scalar image, got 2D"):
        write_ct_series(sitk.Image(4, 4, sitk.sitkInt16), tmp_path)


def test_enhanced_ct_functional_groups(tmp_path):
    image = image_with_geometry()
    path = write_enhanced_ct(image, tmp_path / "e" / "enhanced.dcm", rescale_intercept=-2000.0)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == EnhancedCTImageStorage and ds.NumberOfFrames == 3
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.8, 0.5]
    assert len(shared.PlaneOrientationSequence[0].ImageOrientationPatient) == 6
    assert "PixelSpacing" not in ds and "ImagePositionPatient" not in ds
    frames = ds.PerFrameFunctionalGroupsSequence
    for k, frame in enumerate(frames):
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        np.testing.assert_allclose(
            [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient], position
        )
        assert float(frame.PixelValueTransformationSequence[0].RescaleIntercept) == -2000.0
        assert frame.FrameContentSequence[0].InStackPositionNumber == k + 1
    hu = ds.pixel_array.astype(np.int32) - 2000
    assert np.array_equal(hu, sitk.GetArrayViewFromImage(image))


def test_compressed_series_has_encapsulated_pixel_data(tmp_path):
    paths = write_ct_series(image_with_geometry(), tmp_path, transfer_syntax_uid=RLELossless)
    ds = pydicom.dcmread(paths[1])
    assert ds.file_meta.TransferSyntaxUID == RLELossless and ds["PixelData"].VR == "OB"
    assert np.array_equal(
        ds.pixel_array.astype(np.int32) - 1024, sitk.GetArrayViewFromImage(image_with_geometry())[1]
    )
