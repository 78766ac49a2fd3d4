"""Load a CT series from a DICOM folder as a SimpleITK image in Hounsfield units (LPS geometry).

``scan_folder`` lists the series of a folder (searched recursively) from the headers only;
``load_series`` reads one series, checks that its slices form one regular 3D grid (``dicom_checks``)
and returns the HU volume. Slices are ordered by their position projected on the slice normal (row
direction x column direction), never by file name or Instance Number; each slice's Rescale
Slope/Intercept is applied. Single-frame CT and multi-frame Enhanced CT files are read, uncompressed or
compressed (JPEG Lossless, JPEG 2000, RLE... through pydicom's pixel decoders).

Sub-commands: ``livertumor dicom list DIR`` and ``livertumor dicom convert DIR --out FILE.nrrd``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from LiverTumorSegLib.core.plausibility import RESCALE_NOTE_KEY
from LiverTumorSegLib.io.dicom_checks import (
    DicomInputError,
    DicomInputWarning,
    SliceGeometry,
    StackGeometry,
    check_consistency,
    check_gantry_tilt,
    enhanced_frame_geometry,
    frame_rescale_missing,
    names,
    require_uniform,
    rescale,
    rescale_missing,
    rescale_notes,
    single_frame_geometry,
    slice_axes,
    stack_geometry,
)

__all__ = ["DicomInputError", "DicomInputWarning", "SeriesInfo", "load_series", "scan_folder", "series_geometry",
           "series_headers"]

NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
DEFER_SIZE = 16384  # bytes: larger elements (the pixel data) are read from the file when first accessed


@dataclass(frozen=True)
class SeriesInfo:
    """One series (one Series Instance UID) found by ``scan_folder``; ``num_frames`` counts the slices
    (one per single-frame file, Number of Frames per multi-frame file)."""

    patient_id: str
    patient_name: str
    study_uid: str
    study_description: str
    series_uid: str
    series_description: str
    modality: str
    num_instances: int
    num_frames: int
    files: tuple[Path, ...]

    def to_json(self) -> dict:
        """The fields as JSON types, without ``files`` but with ``folder`` (the files' common folder)
        and ``first_file``."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "files"}
        folder = os.path.commonpath([str(f.parent) for f in self.files])
        return {**fields, "folder": folder, "first_file": str(self.files[0])}


def scan_folder(folder: str | Path) -> list[SeriesInfo]:
    """All image series under ``folder`` (recursively), read from the headers only.

    Files that are not DICOM, cannot be read or hold no image are skipped and named in one
    ``DicomInputWarning``. Raises ``DicomInputError`` when the folder does not exist or holds no DICOM
    image. Series are sorted by their first file's path.
    """
    return _series_list(_scan(Path(folder), defer_pixels=False))


def load_series(
    folder: str | Path, series_uid: str | None = None, *, resample_nonuniform: bool = False
) -> sitk.Image:
    """Load one CT series of ``folder`` as a 3D HU image (int16 when every slope/intercept gives integer
    HU that fit, else float32), with origin, spacing and direction from DICOM (LPS, as SimpleITK).

    Without ``series_uid`` the CT series with the most slices is chosen (a ``DicomInputWarning`` names it
    and the others when there are several). Missing slices or non-uniform spacing raise, unless
    ``resample_nonuniform`` resamples onto a uniform grid (linear in HU, float32, with a warning).
    Raises ``DicomInputError`` for every input that is not one regular CT volume.
    """
    folder = Path(folder)
    groups = _scan(folder, defer_pixels=True)  # headers parsed once; pixel data read on first access
    series = _choose_series(folder, _series_list(groups), series_uid)
    where = f"series {series.series_uid} in {folder}"
    members = groups[series.series_uid]
    geometry, rescales = series_geometry(members, folder, where, require_uniform_spacing=not resample_nonuniform)
    notes = _rescale_notes(members, folder, rescales, where)
    stacks = [
        _stored_frames(ds, path, where) for path, ds in members
    ]  # pixels read once the geometry is fine
    volume = _hu_volume(stacks, rescales, geometry.order)
    spacing = geometry.spacing_mm
    if not geometry.uniform:
        volume, slice_spacing = _resample_uniform(volume, geometry.distances_mm, geometry.spacing_mm[2])
        spacing = (*spacing[:2], slice_spacing)
        warnings.warn(
            f"resampled {where} from {len(rescales)} irregularly spaced slices onto {volume.shape[0]} slices "
            f"{slice_spacing:.4f} mm apart (linear in HU): {'; '.join(geometry.gaps)}",
            DicomInputWarning,
            stacklevel=2,
        )
    image = sitk.GetImageFromArray(volume)
    image.SetOrigin(geometry.origin_mm)
    image.SetSpacing(spacing)
    image.SetDirection(geometry.direction)
    if notes:  # named by the CT plausibility gate when it refuses the image
        image.SetMetaData(RESCALE_NOTE_KEY, "; ".join(notes))
    return image


def series_headers(folder: str | Path, series_uid: str | None = None) -> list[Dataset]:
    """The headers (no pixel data; ``filename`` set) of the series ``load_series(folder, series_uid)`` loads, in
    file order: what a DICOM SEG or SR derived from the loaded volume must reference. Same choice rule, warnings
    and ``DicomInputError`` as ``load_series``."""
    folder = Path(folder)
    groups = _scan(folder, defer_pixels=False)
    series = _choose_series(folder, _series_list(groups), series_uid)
    return [ds for _, ds in groups[series.series_uid]]


# --- scanning -------------------------------------------------------------------------------------------


def _scan(folder: Path, *, defer_pixels: bool) -> dict[str, list[tuple[Path, Dataset]]]:
    """Series UID -> [(path, header dataset)] of every DICOM image file under ``folder``; with
    ``defer_pixels`` the datasets keep a deferred Pixel Data element (read from the file on access),
    else they stop before it. Warns once about skipped files; raises when there is no DICOM image."""
    if not folder.is_dir():
        raise DicomInputError(f"{folder}: no such folder")
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    skipped = []
    paths, unreadable = _files_under(folder)
    for path in paths:
        ds, reason = _read_header(path, defer_pixels)
        if ds is None:
            skipped.append(f"{path.relative_to(folder)} ({reason})")
        else:
            groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} file(s) in {folder} that are not readable DICOM images: {names(skipped)}",
            DicomInputWarning,
            stacklevel=3,
        )
    closed = f"{len(unreadable)} folder(s) could not be opened: {names(unreadable)}" if unreadable else ""
    if closed and groups:
        warnings.warn(f"{folder}: {closed}; their files were not looked at", DicomInputWarning, stacklevel=3)
    if not groups:
        raise DicomInputError(
            f"no DICOM image files in {folder} ({len(paths)} file(s) looked at{'; ' + closed if closed else ''})")
    return groups


def _files_under(folder: Path) -> tuple[list[Path], list[str]]:
    """Every file under ``folder`` (sorted), and the sub-folders that could not be opened, each as
    "relative/path (reason)" (a series in an unreadable folder must not vanish without a word)."""
    unreadable: list[str] = []

    def note(error: OSError) -> None:
        where = Path(error.filename) if error.filename else folder
        name = "." if where == folder else str(where.relative_to(folder))
        unreadable.append(f"{name} ({error.strerror or error})")

    paths = []
    for root, _, files in os.walk(folder, onerror=note):
        paths.extend(Path(root) / name for name in files if (Path(root) / name).is_file())
    return sorted(paths), unreadable


def _read_header(path: Path, defer_pixels: bool) -> tuple[Dataset | None, str]:
    """(dataset, "") or (None, why the file is skipped)."""
    try:
        ds = _read(path, defer_pixels=defer_pixels)
    except (InvalidDicomError, EOFError) as error:
        return None, "not DICOM" if isinstance(error, InvalidDicomError) else f"truncated: {error}"
    except Exception as error:  # noqa: BLE001 - any parser failure means "unreadable", reported by name
        return None, f"unreadable: {type(error).__name__}: {error}"[:120]
    if "SeriesInstanceUID" not in ds or "Rows" not in ds:
        sop_class = ds.get("SOPClassUID")
        return None, f"not an image: {getattr(sop_class, 'name', sop_class) or 'no SOP class'}"
    return ds, ""


def _read(path: Path, *, defer_pixels: bool) -> Dataset:
    """dcmread, stopping before the pixel data or deferring large elements; files without the DICOM
    preamble are read with ``force`` only when they start with a group 0002 or 0008 tag (a raw DICOM data
    set); their transfer syntax is then set from the encoding."""
    options = {"defer_size": DEFER_SIZE} if defer_pixels else {"stop_before_pixels": True}
    try:
        return pydicom.dcmread(path, **options)
    except InvalidDicomError:
        with open(path, "rb") as stream:
            start = stream.read(2)
        if start not in (b"\x02\x00", b"\x08\x00"):
            raise
    ds = pydicom.dcmread(path, force=True, **options)
    if "SOPClassUID" not in ds:
        raise InvalidDicomError(f"{path}: no SOP Class UID")
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, _ = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def _series_list(groups: dict[str, list[tuple[Path, Dataset]]]) -> list[SeriesInfo]:
    """The series of ``_scan``'s groups, sorted by their first file's path."""
    return sorted((_series_info(uid, members) for uid, members in groups.items()), key=lambda s: s.files[0])


def _series_info(uid: str, members: list[tuple[Path, Dataset]]) -> SeriesInfo:
    first = members[0][1]
    return SeriesInfo(
        patient_id=str(first.get("PatientID", "")),
        patient_name=str(first.get("PatientName", "")),
        study_uid=str(first.get("StudyInstanceUID", "")),
        study_description=str(first.get("StudyDescription", "")),
        series_uid=uid,
        series_description=str(first.get("SeriesDescription", "")),
        modality=str(first.get("Modality", "")),
        num_instances=len(members),
        num_frames=sum(int(ds.get("NumberOfFrames") or 1) for _, ds in members),
        files=tuple(path for path, _ in members),
    )


def _describe(series: SeriesInfo) -> str:
    text = f"{series.series_uid} ({series.modality or 'no modality'}, {series.num_frames} slice(s)"
    return text + (f", {series.series_description!r})" if series.series_description else ")")


def _choose_series(folder: Path, all_series: list[SeriesInfo], series_uid: str | None) -> SeriesInfo:
    """The requested series, or the CT series with the most slices (warning when there is a choice)."""
    if series_uid is not None:
        chosen = next((s for s in all_series if s.series_uid == series_uid), None)
        if chosen is None:
            available = "; ".join(_describe(s) for s in all_series)
            raise DicomInputError(f"series {series_uid} not found in {folder}; available series: {available}")
        if chosen.modality != "CT":
            raise DicomInputError(
                f"series {series_uid} in {folder} has modality {chosen.modality or 'none'}, not CT: "
                "only CT series can be loaded"
            )
        return chosen
    ct_series = [s for s in all_series if s.modality == "CT"]
    if not ct_series:
        found = "; ".join(_describe(s) for s in all_series)
        raise DicomInputError(f"no CT series in {folder}: found only {found}")
    chosen = max(ct_series, key=lambda s: s.num_frames)  # the first of equals, in scan order
    if len(all_series) > 1:
        others = "; ".join(_describe(s) for s in all_series if s is not chosen)
        warnings.warn(
            f"{folder} holds {len(all_series)} series; loading the CT series with the most slices "
            f"{_describe(chosen)}; not loaded: {others} (choose one with series_uid / --series)",
            DicomInputWarning,
            stacklevel=3,
        )
    return chosen


# --- reading slices -------------------------------------------------------------------------------------


def series_geometry(members: list[tuple[Path, Dataset]], folder: Path, where: str, *,
                    require_uniform_spacing: bool = True) -> tuple[StackGeometry, list[tuple[int, int, float, float]]]:
    """The checked 3D geometry of one series' files ``members`` ((path under ``folder``, header) pairs): every
    slice (one per single-frame file, one per frame of a multi-frame file) on one plane grid, no gantry tilt,
    no duplicate positions and, with ``require_uniform_spacing``, no gaps. Returns the geometry and, per slice
    in input order, (file index, frame index, rescale slope, rescale intercept). ``DicomInputError`` (one line,
    naming ``where`` and the files) otherwise. The loader and the DICOM SEG writer share it."""
    slices, rescales = _slice_geometries(members, folder, where)
    check_consistency(slices, where)
    check_gantry_tilt(slices, slice_axes(slices[0].orientation, where), where)
    single_spacing = _single_slice_spacing(slices[0], where) if len(slices) == 1 else None
    geometry = stack_geometry(slices, where, single_slice_spacing_mm=single_spacing)
    if require_uniform_spacing:
        require_uniform(geometry, where)
    return geometry, rescales


def _slice_geometries(members: list[tuple[Path, Dataset]], folder: Path, where: str):
    """Every slice of a series (one per single-frame file, one per frame of a multi-frame file): their
    geometries, and per slice (file index, frame index, rescale slope, rescale intercept)."""
    slices, rescales = [], []
    for file_index, (path, ds) in enumerate(members):
        name = str(path.relative_to(folder))
        frames = int(ds.get("NumberOfFrames") or 1)
        if "PerFrameFunctionalGroupsSequence" in ds:
            for k in range(frames):
                geometry, slope, intercept = enhanced_frame_geometry(ds, k, f"{name} frame {k + 1}", where)
                slices.append(geometry)
                rescales.append((file_index, k, slope, intercept))
        elif frames == 1:
            slices.append(single_frame_geometry(ds, name, where))
            rescales.append((file_index, 0, *rescale(ds)))
        else:
            raise DicomInputError(f"{name} of {where} has {frames} frames but no per-frame plane positions")
    return slices, rescales


def _rescale_notes(members: list[tuple[Path, Dataset]], folder: Path, rescales: list[tuple], where: str) -> list[str]:
    """``dicom_checks.rescale_notes`` of the series (raises on slope 0), each also a ``DicomInputWarning``.
    ``rescales``: per slice (file index, frame index, slope, intercept), as ``series_geometry`` returns them."""
    sources = [str(members[f][0].relative_to(folder)) + (f" frame {k + 1}" if members[f][1].get("NumberOfFrames")
                                                          and int(members[f][1].NumberOfFrames) > 1 else "")
               for f, k, _, _ in rescales]
    missing = [
        frame_rescale_missing(members[f][1], k) if "PerFrameFunctionalGroupsSequence" in members[f][1]
        else rescale_missing(members[f][1])
        for f, k, _, _ in rescales
    ]
    notes = rescale_notes(sources, [r[2] for r in rescales], [r[3] for r in rescales], missing, where)
    for note in notes:
        warnings.warn(f"{where}: {note}", DicomInputWarning, stacklevel=3)
    return notes


def _stored_frames(ds: Dataset, path: Path, where: str) -> np.ndarray:
    """Stored values of every frame as a (frames, rows, columns) array (native 16-bit data without a copy)."""
    shape = (int(ds.get("NumberOfFrames") or 1), int(ds.Rows), int(ds.Columns))
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        pixel_data = ds.PixelData  # a deferred element is read from the file here
        if pixel_data is None:
            raise ValueError("no pixel data")
        if (
            syntax in NATIVE_SYNTAXES
            and int(ds.BitsAllocated) == 16
            and int(ds.get("SamplesPerPixel", 1)) == 1
        ):
            return _native_16bit(ds, pixel_data, shape)
        return ds.pixel_array.reshape(shape)
    except Exception as error:  # noqa: BLE001 - read/decoder failures vary by plugin; named in the message
        raise DicomInputError(
            f"cannot read the pixel data of {path} of {where} ({syntax.name}): {error}"
        ) from error


def _native_16bit(ds: Dataset, pixel_data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Uncompressed little-endian 16-bit stored values, masked or sign-extended to Bits Stored."""
    bits_stored = int(ds.get("BitsStored", 16))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    count = int(np.prod(shape))
    if len(pixel_data) < 2 * count:
        raise ValueError(f"{len(pixel_data)} bytes of pixel data, {2 * count} expected for {shape}")
    stored = np.frombuffer(pixel_data, "<i2" if signed else "<u2", count=count).reshape(shape)
    if bits_stored < 16 and signed:  # sign-extend from bit bits_stored - 1
        stored = (stored << (16 - bits_stored)) >> (16 - bits_stored)
    elif bits_stored < 16 and stored.max() >= 1 << bits_stored:  # unused high bits are not pixel value
        stored = stored & ((1 << bits_stored) - 1)
    return stored


def _single_slice_spacing(first: SliceGeometry, where: str) -> float:
    """Slice spacing of a one-slice series: Slice Thickness (else Spacing Between Slices, else 1 mm)."""
    if first.thickness_mm and first.thickness_mm > 0:
        return first.thickness_mm
    warnings.warn(
        f"{where} has one slice without Slice Thickness: slice spacing set to 1 mm",
        DicomInputWarning,
        stacklevel=3,
    )
    return 1.0


# --- HU volume ------------------------------------------------------------------------------------------


def _hu_volume(stacks: list[np.ndarray], rescales: list[tuple], order: Sequence[int]) -> np.ndarray:
    """The (z, y, x) HU volume with z in ``order``: int16 when every slope and intercept is an integer
    and the HU fit int16, else float32."""
    integer = all(float(s).is_integer() and float(i).is_integer() for _, _, s, i in rescales)
    if integer:
        ranges = [(int(stack.min()), int(stack.max())) if stack.size else (0, 0) for stack in stacks]
        hu_bounds = [
            bound * int(slope) + int(intercept) for f, _, slope, intercept in rescales for bound in ranges[f]
        ]
        integer = min(hu_bounds) >= -32768 and max(hu_bounds) <= 32767
    first = stacks[0]
    volume = np.empty((len(order), *first.shape[1:]), np.int16 if integer else np.float32)
    for z, index in enumerate(order):
        file_index, frame, slope, intercept = rescales[index]
        stored = stacks[file_index][frame]
        if integer and slope == 1:
            np.add(stored, np.int32(intercept), out=volume[z], casting="unsafe")
        elif integer:
            volume[z] = stored.astype(np.int32) * int(slope) + int(intercept)
        else:
            volume[z] = stored.astype(np.float64) * slope + intercept
    return volume


def _resample_uniform(
    volume: np.ndarray, distances_mm: np.ndarray, expected_mm: float
) -> tuple[np.ndarray, float]:
    """Linear interpolation (in HU, float32) of the (z, y, x) ``volume`` whose slices lie at
    ``distances_mm`` along the normal onto evenly spaced slices from the first to the last position,
    about ``expected_mm`` apart. Returns the volume and the new slice spacing."""
    span = float(distances_mm[-1] - distances_mm[0])
    count = max(2, int(round(span / expected_mm)) + 1)
    targets = distances_mm[0] + np.arange(count) * (span / (count - 1))
    lower = np.clip(np.searchsorted(distances_mm, targets, side="right") - 1, 0, len(distances_mm) - 2)
    weights = (targets - distances_mm[lower]) / (distances_mm[lower + 1] - distances_mm[lower])
    resampled = np.empty((count, *volume.shape[1:]), np.float32)
    for z, (k, w) in enumerate(zip(lower, weights, strict=True)):
        resampled[z] = (1 - w) * volume[k].astype(np.float32) + w * volume[k + 1].astype(np.float32)
    return resampled, span / (count - 1)


# --- command line ---------------------------------------------------------------------------------------
