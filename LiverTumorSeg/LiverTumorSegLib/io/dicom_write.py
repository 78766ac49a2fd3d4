"""Write a CT volume (HU, LPS geometry) as a DICOM CT series or as one Enhanced CT file.

Used by the synthetic phantom (``phantom.py``) and by the tests, which build every good and bad input
case of the reader (``dicom_io``) from these files. The pixels go through the usual DICOM chain: stored
value = round((HU - intercept) / slope) as uint16 or int16, with Rescale Slope/Intercept in each file.

Geometry follows DICOM and SimpleITK (both LPS): voxel index (i, j, k) of the SimpleITK image is
column i, row j of slice k. Image Orientation (Patient) holds the first two direction columns, Image
Position (Patient) of slice k is the physical point of voxel (0, 0, k), and Pixel Spacing is
``[row spacing, column spacing] = [spacing[1], spacing[0]]``. A reader sorts the slices along the normal
``row direction x column direction``; write right-handed directions (det = +1) when the slice order must
survive a round trip (a left-handed volume comes back with its slices in the opposite index order).

Compressed transfer syntaxes: JPEG 2000 lossless and RLE lossless use pydicom's encoders; JPEG Lossless
(Process 14, first-order prediction, 1.2.840.10008.1.2.4.70) has no pydicom encoder, so its frames are
encoded with GDCM through SimpleITK, as are JPEG 2000 frames smaller than 32 pixels (OpenJPEG's default
six resolution levels need at least 32).
"""

from __future__ import annotations

import datetime as _dt
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from LiverTumorSegLib.io.atomic import atomic_write

NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
WINDOW_CENTER_HU = 40
WINDOW_WIDTH_HU = 350


def write_ct_series(
    image: sitk.Image,
    out_dir: str | Path,
    *,
    patient_id: str = "LTA-PHANTOM",
    patient_name: str = "Phantom^Liver",
    study_uid: str | None = None,
    series_uid: str | None = None,
    study_description: str = "",
    series_description: str = "",
    series_number: int = 1,
    modality: str = "CT",
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    transfer_syntax_uid: str = pydicom.uid.ExplicitVRLittleEndian,
    extra_tags: dict[str, object] | None = None,
    file_name_pattern: str = "IM{index:04d}.dcm",
) -> list[Path]:
    """Write the 3D HU ``image`` (any scalar pixel type, size x, y, z; any direction, oblique too) as one
    single-frame CT Image Storage file per slice in ``out_dir`` (created if needed).

    ``file_name_pattern`` is formatted with ``index`` = slice index k (0-based). ``extra_tags`` maps
    DICOM keywords to values set on every file last (overriding the defaults, e.g.
    ``{"GantryDetectorTilt": 5.0}``). Returns the written paths in slice order.
    """
    volume = _hu_array(image)
    stored, pixel_representation = stored_values(volume, rescale_slope, rescale_intercept)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = _common_dataset(
        image,
        CTImageStorage,
        transfer_syntax_uid,
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_uid,
        series_uid=series_uid,
        study_description=study_description,
        series_description=series_description,
        series_number=series_number,
        modality=modality,
    )
    ds.PixelRepresentation = pixel_representation
    ds.ImageOrientationPatient = [_ds(v) for v in _orientation(image)]
    ds.update(_rescale_dataset(rescale_slope, rescale_intercept))
    _apply_extra_tags(ds, extra_tags)
    normal = np.cross(*np.reshape(_orientation(image), (2, 3)))
    frames = _encoded_frames(stored, transfer_syntax_uid, ds)
    paths = []
    for k, frame in enumerate(frames):
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(float(np.dot(position, normal)))
        _set_pixel_data(ds, [frame], transfer_syntax_uid)
        path = out_dir / file_name_pattern.format(index=k)
        _save(ds, path)
        paths.append(path)
    return paths


def write_enhanced_ct(
    image: sitk.Image,
    path: str | Path,
    *,
    patient_id: str = "LTA-PHANTOM",
    patient_name: str = "Phantom^Liver",
    study_uid: str | None = None,
    series_uid: str | None = None,
    study_description: str = "",
    series_description: str = "",
    series_number: int = 1,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    transfer_syntax_uid: str = pydicom.uid.ExplicitVRLittleEndian,
    extra_tags: dict[str, object] | None = None,
) -> Path:
    """Write the 3D HU ``image`` as one multi-frame Enhanced CT Image Storage file at ``path``.

    Frame k is slice k. Shared functional groups: Pixel Measures (Pixel Spacing, Slice Thickness,
    Spacing Between Slices) and Plane Orientation; per-frame groups: Plane Position (the physical point of
    voxel (0, 0, k)), Pixel Value Transformation (slope, intercept, type HU) and Frame Content.
    """
    volume = _hu_array(image)
    stored, pixel_representation = stored_values(volume, rescale_slope, rescale_intercept)
    ds = _common_dataset(
        image,
        EnhancedCTImageStorage,
        transfer_syntax_uid,
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_uid,
        series_uid=series_uid,
        study_description=study_description,
        series_description=series_description,
        series_number=series_number,
        modality="CT",
    )
    for keyword in ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices", "WindowCenter", "WindowWidth"):
        del ds[keyword]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.PixelRepresentation = pixel_representation
    ds.NumberOfFrames = stored.shape[0]
    ds.InstanceNumber = 1
    ds.ContentQualification = "PRODUCT"
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    ds.SharedFunctionalGroupsSequence = Sequence([_shared_groups(image)])
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [_frame_groups(image, k, rescale_slope, rescale_intercept) for k in range(stored.shape[0])]
    )
    _apply_extra_tags(ds, extra_tags)
    frames = _encoded_frames(stored, transfer_syntax_uid, ds)
    _set_pixel_data(ds, list(frames), transfer_syntax_uid)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(ds, path)
    return path


def stored_values(hu: np.ndarray, slope: float, intercept: float) -> tuple[np.ndarray, int]:
    """Stored pixel values ``round((hu - intercept) / slope)`` for the HU array ``hu`` (any shape) and
    the Pixel Representation: uint16 (0) when every value fits, else int16 (1). Raises ``ValueError``
    when the values fit neither."""
    if slope == 0:
        raise ValueError("rescale slope must not be 0")
    if np.issubdtype(hu.dtype, np.integer) and slope == 1 and float(intercept).is_integer():
        values = hu.astype(np.int32) - int(intercept)
    else:
        values = np.rint((hu.astype(np.float64) - intercept) / slope)
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if low >= 0 and high <= 65535:
        return values.astype(np.uint16), 0
    if low >= -32768 and high <= 32767:
        return values.astype(np.int16), 1
    raise ValueError(
        f"HU range [{hu.min()}, {hu.max()}] with slope {slope} and intercept {intercept} gives stored "
        f"values [{low}, {high}], which fit neither uint16 nor int16: choose another slope/intercept"
    )


def _hu_array(image: sitk.Image) -> np.ndarray:
    """The image's voxels as a (z, y, x) array; raises ``ValueError`` unless it is a 3D scalar image."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"expected a 3D scalar image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} components"
        )
    return sitk.GetArrayViewFromImage(image)


def _ds(value: float) -> str:
    """A decimal string (at most 16 characters) as precise as DICOM allows. pydicom rounds e.g.
    9.999999999999998 up to the 17 characters "10.00000000000000"; that text is formatted once more ("10.0")."""
    text = format_number_as_ds(float(value))
    return text if len(text) <= 16 else format_number_as_ds(float(text))


def _orientation(image: sitk.Image) -> list[float]:
    """Image Orientation (Patient): the first two columns of the direction matrix (row, column dirs)."""
    direction = np.reshape(image.GetDirection(), (3, 3))
    return [*direction[:, 0], *direction[:, 1]]


def _common_dataset(image: sitk.Image, sop_class: str, transfer_syntax_uid: str, **ids) -> Dataset:
    """Patient/study/series/equipment/frame of reference/image pixel attributes shared by all files."""
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
    ds.AccessionNumber = ""
    ds.Modality = ids["modality"]
    ds.Manufacturer = "LiverTumorAnalysis"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = ids["study_description"]
    ds.SeriesDescription = ids["series_description"]
    ds.PatientName = ids["patient_name"]
    ds.PatientID = ids["patient_id"]
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    spacing = image.GetSpacing()
    ds.SliceThickness = _ds(spacing[2])
    ds.SpacingBetweenSlices = _ds(spacing[2])
    ds.KVP = ""
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = ids["study_uid"] or generate_uid()
    ds.SeriesInstanceUID = ids["series_uid"] or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = ids["series_number"]
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = image.GetSize()[1]
    ds.Columns = image.GetSize()[0]
    ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.WindowCenter = WINDOW_CENTER_HU
    ds.WindowWidth = WINDOW_WIDTH_HU
    return ds


def _rescale_dataset(slope: float, intercept: float) -> Dataset:
    ds = Dataset()
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = _ds(slope)
    ds.RescaleType = "HU"
    return ds


def _save(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM file at ``path``, all at once (``io.atomic``; an earlier file is replaced)."""
    atomic_write(path, lambda temporary: ds.save_as(temporary, enforce_file_format=True), overwrite=True)


def _apply_extra_tags(ds: Dataset, extra_tags: dict[str, object] | None) -> None:
    for keyword, value in (extra_tags or {}).items():
        if pydicom.datadict.tag_for_keyword(keyword) is None:
            raise ValueError(f"extra_tags: {keyword!r} is not a DICOM keyword")
        setattr(ds, keyword, value)


def _shared_groups(image: sitk.Image) -> Dataset:
    spacing = image.GetSpacing()
    measures = Dataset()
    measures.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
    measures.SliceThickness = _ds(spacing[2])
    measures.SpacingBetweenSlices = _ds(spacing[2])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [_ds(v) for v in _orientation(image)]
    window = Dataset()
    window.WindowCenter = WINDOW_CENTER_HU
    window.WindowWidth = WINDOW_WIDTH_HU
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.FrameVOILUTSequence = Sequence([window])
    return shared


def _frame_groups(image: sitk.Image, k: int, slope: float, intercept: float) -> Dataset:
    position = Dataset()
    position.ImagePositionPatient = [_ds(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
    content = Dataset()
    content.StackID = "1"
    content.InStackPositionNumber = k + 1
    content.DimensionIndexValues = [1, k + 1]
    frame = Dataset()
    frame.FrameContentSequence = Sequence([content])
    frame.PlanePositionSequence = Sequence([position])
    frame.PixelValueTransformationSequence = Sequence([_rescale_dataset(slope, intercept)])
    return frame


def _set_pixel_data(ds: Dataset, frames: list[bytes], transfer_syntax_uid: str) -> None:
    """Pixel Data from the encoded frames: concatenated (native, OW) or encapsulated (compressed, OB)."""
    if transfer_syntax_uid in NATIVE_SYNTAXES:
        ds.PixelData = frames[0] if len(frames) == 1 else b"".join(frames)
        ds["PixelData"].VR = "OW"
    else:
        ds.PixelData = encapsulate(frames, has_bot=len(frames) > 1)
        ds["PixelData"].VR = "OB"


def _encoded_frames(stored: np.ndarray, transfer_syntax_uid: str, ds: Dataset) -> Iterable[bytes]:
    """The (z, y, x) stored values as one byte string per slice in ``transfer_syntax_uid``."""
    if transfer_syntax_uid in NATIVE_SYNTAXES:
        return (stored[k].tobytes() for k in range(stored.shape[0]))
    if transfer_syntax_uid == JPEGLosslessSV1:
        return _gdcm_frames(stored, "JPEG", JPEGLosslessSV1)
    if transfer_syntax_uid == JPEG2000Lossless and min(stored.shape[1:]) < 32:
        return _gdcm_frames(stored, "JPEG2000", JPEG2000Lossless)  # OpenJPEG via pydicom needs >= 32 pixels
    encoder = pydicom.pixels.get_encoder(transfer_syntax_uid)
    if not encoder.is_available:
        raise ValueError(f"no pydicom encoder available for transfer syntax {transfer_syntax_uid}")
    options = {
        "rows": stored.shape[1],
        "columns": stored.shape[2],
        "samples_per_pixel": 1,
        "bits_allocated": 16,
        "bits_stored": 16,
        "pixel_representation": int(ds.PixelRepresentation),
        "photometric_interpretation": "MONOCHROME2",
        "number_of_frames": 1,
    }
    return (encoder.encode(np.ascontiguousarray(stored[k]), **options) for k in range(stored.shape[0]))


def _gdcm_frames(stored: np.ndarray, compressor: str, syntax: str) -> list[bytes]:
    """Codestreams of each (y, x) slice encoded by GDCM (SimpleITK's DICOM writer with ``compressor``),
    which must produce transfer syntax ``syntax``."""
    frames = []
    with tempfile.TemporaryDirectory(prefix="lta-gdcm-") as tmp:
        path = str(Path(tmp) / "frame.dcm")
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.SetFileName(path)
        writer.UseCompressionOn()
        writer.SetCompressor(compressor)
        for k in range(stored.shape[0]):
            writer.Execute(sitk.GetImageFromArray(stored[k]))
            encoded = pydicom.dcmread(path)
            if encoded.file_meta.TransferSyntaxUID != syntax:
                raise RuntimeError(f"GDCM wrote {encoded.file_meta.TransferSyntaxUID}, not {syntax}")
            frames.append(next(generate_frames(encoded.PixelData, number_of_frames=1)))
    return frames
