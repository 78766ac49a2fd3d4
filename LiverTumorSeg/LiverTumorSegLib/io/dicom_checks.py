"""Geometry checks of a DICOM slice stack: one plane grid, slices ordered along the normal, no gaps.

Every slice (a single-frame file, or one frame of a multi-frame Enhanced CT file with its functional
groups) becomes a ``SliceGeometry`` (``single_frame_geometry``, ``enhanced_frame_geometry``); the checks
here decide whether the stack is one regular 3D grid and, if so, give its
SimpleITK geometry (LPS, like DICOM). Every refusal is a ``DicomInputError`` whose one-line message
names the series, the folder, the offending files and the numbers that failed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

ORIENTATION_TOL = 1e-4  # direction cosines (unitless)
SPACING_REL_TOL = 1e-4  # pixel spacing, relative
DUPLICATE_TOL_MM = 1e-2  # two slices closer than this along the normal are the same position
GAP_REL_TOL = 1e-2  # a gap may differ from the expected spacing by 1 % (plus GAP_ABS_TOL_MM)
GAP_ABS_TOL_MM = 1e-3
TILT_SHIFT_TOL = 0.1  # in-plane drift of the slice positions allowed, as a fraction of the pixel size
MAX_NAMED = 8  # file names listed in one message


class DicomInputError(ValueError):
    """A DICOM folder, file or series that cannot be loaded as one CT volume; the message names the
    folder and/or files and the problem, on one line."""


class DicomInputWarning(UserWarning):
    """Something the loader did on its own: files skipped, a series chosen among several, resampling."""


@dataclass(frozen=True)
class SliceGeometry:
    """Geometry of one slice as written in its DICOM header (LPS, mm)."""

    source: str  # "IM0001.dcm" or "enhanced.dcm frame 3", relative to the loaded folder
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float]  # (row spacing = between rows, column spacing = between columns)
    orientation: tuple[float, ...]  # Image Orientation (Patient): row direction, then column direction
    position_mm: tuple[float, float, float]  # Image Position (Patient): center of the first voxel
    thickness_mm: float | None
    gantry_tilt_deg: float


@dataclass(frozen=True)
class StackGeometry:
    """The slices in their order along the normal, and the SimpleITK geometry of the resulting volume.

    ``order[k]`` is the index (in the input list) of the slice that becomes z index k; ``distances_mm[k]``
    its position along the normal. ``spacing_mm`` is (x, y, z) = (column spacing, row spacing, slice
    spacing); ``direction`` is SimpleITK's row-major 3x3 matrix whose columns are the row direction, the
    column direction and the normal. ``gaps`` describes irregular gaps (empty when uniform).
    """

    order: tuple[int, ...]
    distances_mm: np.ndarray
    origin_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    direction: tuple[float, ...]
    gaps: tuple[str, ...]

    @property
    def uniform(self) -> bool:
        return not self.gaps


def names(sources: Sequence[str]) -> str:
    """Up to ``MAX_NAMED`` sources, then "and N more"."""
    shown = ", ".join(sources[:MAX_NAMED])
    return shown if len(sources) <= MAX_NAMED else f"{shown} and {len(sources) - MAX_NAMED} more"


# --- slice geometry from the headers ---------------------------------------------------------------------


def _decimal_values(ds: Dataset | None, keyword: str) -> list | None:
    """Values of a decimal-string element; parsed from the raw bytes when pydicom has not converted the
    element yet (much faster than pydicom's DS conversion). None when absent."""
    if ds is None or keyword not in ds:
        return None
    value = ds.get_item(keyword).value
    if isinstance(value, bytes):
        text = value.decode("ascii", "replace").strip(" \0")
        return text.split("\\") if text else []
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list | tuple | MultiValue) else [value]


def _floats(ds: Dataset, keyword: str, count: int, source: str, where: str) -> tuple[float, ...]:
    values = _decimal_values(ds, keyword)
    try:
        if values is None or len(values) != count:
            raise ValueError(values)
        return tuple(float(v) for v in values)
    except ValueError:
        raise DicomInputError(
            f"{source} of {where} has no valid {keyword} (needed for the volume geometry): {values}"
        ) from None


def _optional_float(ds: Dataset | None, keyword: str) -> float | None:
    values = _decimal_values(ds, keyword)
    try:
        return float(values[0]) if values else None
    except ValueError:
        return None


def rescale(ds: Dataset) -> tuple[float, float]:
    """(Rescale Slope, Rescale Intercept) of ``ds`` (a data set or a Pixel Value Transformation item);
    (1, 0) where absent (``rescale_missing`` tells)."""
    slope = _optional_float(ds, "RescaleSlope")
    intercept = _optional_float(ds, "RescaleIntercept")
    return (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)


def rescale_missing(ds: Dataset) -> bool:
    """Whether ``ds`` lacks a usable Rescale Slope or Rescale Intercept (stored values then count as HU)."""
    return _optional_float(ds, "RescaleSlope") is None or _optional_float(ds, "RescaleIntercept") is None


def _counted(sources: Sequence[str], total: int) -> str:
    """ "48 of 48 files", or "3 of 48 files (IM0001.dcm, ...)" naming them when not all are concerned."""
    unit = "frames" if any(" frame " in source for source in sources) else "files"
    return f"{len(sources)} of {total} {unit}" + ("" if len(sources) == total else f" ({names(sources)})")


def rescale_notes(sources: Sequence[str], slopes: Sequence[float], intercepts: Sequence[float],
                  missing: Sequence[bool], where: str) -> list[str]:
    """What is wrong or unusual in the rescaling of a CT series, one note per finding (empty when nothing).

    Per slice: its source name, Rescale Slope, Rescale Intercept and whether the tags were missing. A slope of
    0 raises ``DicomInputError`` (every voxel of those slices would read the intercept); missing tags, slopes
    that differ between slices and slopes far from 1 are returned as notes for warnings and for the CT
    plausibility gate's message.
    """
    total = len(sources)
    zero = [source for source, slope in zip(sources, slopes, strict=True) if slope == 0]
    if zero:
        values = sorted({intercept for slope, intercept in zip(slopes, intercepts, strict=True) if slope == 0})
        raise DicomInputError(
            f"RescaleSlope is 0 in {_counted(zero, total)} of {where}: every voxel of them would read "
            f"{', '.join(f'{v:g}' for v in values)} HU (the intercept); the export is broken: re-export the series")
    notes = []
    absent = [source for source, flag in zip(sources, missing, strict=True) if flag]
    if absent:
        notes.append(f"Rescale Slope/Intercept missing in {_counted(absent, total)}: stored values taken as HU")
    counts = Counter(slopes)
    if len(counts) > 1:
        listed = "; ".join(f"{slope:g} in {count}" for slope, count in counts.most_common())
        odd = [source for source, slope in zip(sources, slopes, strict=True) if slope != counts.most_common(1)[0][0]]
        notes.append(f"RescaleSlope differs between slices ({listed}; {names(odd)}), applied per slice")
    unusual = sorted({slope for slope in slopes if not 0.01 <= abs(slope) <= 100})
    if unusual:
        notes.append(f"RescaleSlope {', '.join(f'{s:g}' for s in unusual)} (CT slopes are normally 1)")
    return notes


def single_frame_geometry(ds: Dataset, source: str, where: str) -> SliceGeometry:
    """Geometry of a single-frame image (CT Image Storage) from its top-level attributes."""
    return SliceGeometry(
        source=source,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        pixel_spacing_mm=_floats(ds, "PixelSpacing", 2, source, where),
        orientation=_floats(ds, "ImageOrientationPatient", 6, source, where),
        position_mm=_floats(ds, "ImagePositionPatient", 3, source, where),
        thickness_mm=_optional_float(ds, "SliceThickness") or _optional_float(ds, "SpacingBetweenSlices"),
        gantry_tilt_deg=_optional_float(ds, "GantryDetectorTilt") or 0.0,
    )


def _group(ds: Dataset, k: int, keyword: str) -> Dataset | None:
    """First item of the functional group ``keyword`` for frame k: per-frame, else shared."""
    per_frame = ds.PerFrameFunctionalGroupsSequence
    for item in (per_frame[k] if k < len(per_frame) else None, *ds.get("SharedFunctionalGroupsSequence", [])):
        if item is not None and item.get(keyword):
            return item.get(keyword)[0]
    return None


def enhanced_frame_geometry(
    ds: Dataset, k: int, source: str, where: str
) -> tuple[SliceGeometry, float, float]:
    """Geometry and rescale of frame k of a multi-frame (Enhanced CT) file."""
    measures = _group(ds, k, "PixelMeasuresSequence") or Dataset()
    plane_orientation = _group(ds, k, "PlaneOrientationSequence") or Dataset()
    plane_position = _group(ds, k, "PlanePositionSequence") or Dataset()
    transform = _group(ds, k, "PixelValueTransformationSequence") or ds
    tilt = _optional_float(_group(ds, k, "CTAcquisitionDetailsSequence"), "GantryDetectorTilt")
    geometry = SliceGeometry(
        source=source,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        pixel_spacing_mm=_floats(measures, "PixelSpacing", 2, source, where),
        orientation=_floats(plane_orientation, "ImageOrientationPatient", 6, source, where),
        position_mm=_floats(plane_position, "ImagePositionPatient", 3, source, where),
        thickness_mm=_optional_float(measures, "SliceThickness"),
        gantry_tilt_deg=tilt or _optional_float(ds, "GantryDetectorTilt") or 0.0,
    )
    return geometry, *rescale(transform)


def frame_rescale_missing(ds: Dataset, k: int) -> bool:
    """Whether frame k of a multi-frame file has no usable Rescale Slope/Intercept (per-frame, shared or top)."""
    return rescale_missing(_group(ds, k, "PixelValueTransformationSequence") or ds)


# --- checks ---------------------------------------------------------------------------------------------


def check_consistency(slices: Sequence[SliceGeometry], where: str) -> None:
    """Raise unless every slice has the same rows/columns, pixel spacing and orientation.

    ``where`` names the series and folder in messages. The most common value is the reference; the
    message lists the slices that differ from it.
    """
    _check_same(
        slices,
        where,
        "rows x columns",
        lambda s: (s.rows, s.columns),
        np.array_equal,
        lambda v: f"{v[0]} x {v[1]}",
    )
    _check_same(
        slices,
        where,
        "pixel spacing",
        lambda s: s.pixel_spacing_mm,
        lambda a, b: np.allclose(a, b, rtol=SPACING_REL_TOL, atol=0),
        lambda v: f"{v[0]:g} x {v[1]:g} mm",
    )
    _check_same(
        slices,
        where,
        "image orientation",
        lambda s: s.orientation,
        lambda a, b: np.allclose(a, b, rtol=0, atol=ORIENTATION_TOL),
        lambda v: "\\".join(f"{x:.4f}" for x in v),
    )


def _check_same(slices, where: str, what: str, value: Callable, close: Callable, show: Callable) -> None:
    reference, count = Counter(value(s) for s in slices).most_common(1)[0]
    others = [s for s in slices if not close(value(s), reference)]
    if not others:
        return
    variants = Counter(value(s) for s in others)
    described = "; ".join(
        f"{show(v)} in {names([s.source for s in others if value(s) == v])}" for v in variants
    )
    raise DicomInputError(
        f"inconsistent {what} within {where}: {show(reference)} in {len(slices) - len(others)} slice(s), "
        f"but {described} ({len(others)} slice(s) differ)"
    )


def slice_axes(orientation: Sequence[float], where: str) -> np.ndarray:
    """3x3 array whose rows are the unit row direction, column direction and normal (their cross product)."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    if np.linalg.norm(row) < 0.5 or np.linalg.norm(col) < 0.5:
        raise DicomInputError(f"invalid image orientation {list(orientation)} in {where}")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    if abs(np.dot(row, col)) > 1e-3:
        raise DicomInputError(
            f"image orientation {list(orientation)} in {where} is not orthogonal (row . column = "
            f"{np.dot(row, col):.4f})"
        )
    normal = np.cross(row, col)
    return np.stack([row, col, normal / np.linalg.norm(normal)])


def check_gantry_tilt(slices: Sequence[SliceGeometry], axes: np.ndarray, where: str) -> None:
    """Raise (message contains "gantry tilt") when a slice declares a Gantry/Detector Tilt or when the
    slice positions drift across the slice plane, i.e. the stack is sheared rather than stacked along the
    normal."""
    tilted = [s.source for s in slices if abs(s.gantry_tilt_deg) > 1e-3]
    if tilted:
        angles = sorted({round(s.gantry_tilt_deg, 3) for s in slices if abs(s.gantry_tilt_deg) > 1e-3})
        raise DicomInputError(
            f"gantry tilt of {', '.join(f'{a:g}' for a in angles)} degrees (Gantry/Detector Tilt) in {where} "
            f"({names(tilted)}): tilted acquisitions are not supported; use a reconstruction without tilt"
        )
    if len(slices) < 2:
        return
    positions = np.array([s.position_mm for s in slices])
    offsets = positions - positions[0]
    along = offsets @ axes[2]
    across = offsets - np.outer(along, axes[2])
    shift = np.linalg.norm(across, axis=1)
    tolerance = max(1e-3, TILT_SHIFT_TOL * min(slices[0].pixel_spacing_mm))
    worst = int(np.argmax(shift))
    if shift[worst] > tolerance:
        angle = np.degrees(np.arctan2(shift[worst], abs(along[worst]))) if along[worst] else 90.0
        raise DicomInputError(
            f"gantry tilt (sheared stack) in {where}: the slice positions drift {shift[worst]:.3f} mm across "
            f"the slice plane over {abs(along[worst]):.3f} mm along the slice normal (about {angle:.2f} "
            f"degrees, between {slices[0].source} and {slices[worst].source}); tilted acquisitions are "
            "not supported"
        )


def stack_geometry(
    slices: Sequence[SliceGeometry], where: str, *, single_slice_spacing_mm: float | None = None
) -> StackGeometry:
    """Order the slices along the normal and derive the volume geometry; raise on duplicate positions.

    Call ``check_consistency`` and ``check_gantry_tilt`` first. Gaps that differ from the expected
    spacing (the median gap) are returned in ``gaps``, not raised: see ``require_uniform``. A single
    slice gets ``single_slice_spacing_mm`` (default 1 mm) as its slice spacing.
    """
    axes = slice_axes(slices[0].orientation, where)
    distances = np.array([np.dot(s.position_mm, axes[2]) for s in slices])
    order = np.argsort(distances, kind="stable")
    distances = distances[order]
    steps = np.diff(distances)
    _check_duplicates(slices, order, steps, where)
    if len(slices) == 1:
        slice_spacing, gaps = single_slice_spacing_mm or 1.0, ()
    else:
        expected = float(np.median(steps))
        gaps = _irregular_gaps(slices, order, distances, expected)
        slice_spacing = expected if gaps else float((distances[-1] - distances[0]) / (len(slices) - 1))
    row_spacing, column_spacing = slices[0].pixel_spacing_mm
    return StackGeometry(
        order=tuple(int(i) for i in order),
        distances_mm=distances,
        origin_mm=tuple(float(v) for v in slices[order[0]].position_mm),
        spacing_mm=(float(column_spacing), float(row_spacing), float(slice_spacing)),
        direction=tuple(float(v) for v in axes.T.ravel()),
        gaps=gaps,
    )


def _check_duplicates(slices, order, steps, where: str) -> None:
    duplicates = np.flatnonzero(steps < DUPLICATE_TOL_MM)
    if duplicates.size:
        pairs = [f"{slices[order[i]].source} = {slices[order[i + 1]].source}" for i in duplicates]
        raise DicomInputError(
            f"duplicate slice positions in {where}: {len(pairs)} pair(s) of slices at the same position "
            f"along the normal ({names(pairs)}); the series mixes several acquisitions or holds copies"
        )


def _irregular_gaps(slices, order, distances, expected: float) -> tuple[str, ...]:
    gaps = []
    tolerance = GAP_ABS_TOL_MM + GAP_REL_TOL * expected
    for i, step in enumerate(np.diff(distances)):
        if abs(step - expected) <= tolerance:
            continue
        ratio = step / expected
        if ratio > 1.5 and abs(ratio - round(ratio)) * expected <= tolerance:
            kind = f"{round(ratio) - 1} slice(s) missing"
        else:
            kind = "non-uniform spacing"
        gaps.append(
            f"gap {step:.3f} mm between {slices[order[i]].source} ({distances[i]:.3f} mm) and "
            f"{slices[order[i + 1]].source} ({distances[i + 1]:.3f} mm): {kind}"
        )
    return tuple(gaps)


def require_uniform(geometry: StackGeometry, where: str) -> None:
    """Raise (message says "missing slices or non-uniform spacing", the gaps and the expected spacing)
    unless the slices are evenly spaced."""
    if geometry.uniform:
        return
    raise DicomInputError(
        f"missing slices or non-uniform slice spacing in {where}: expected spacing "
        f"{geometry.spacing_mm[2]:.3f} mm; {len(geometry.gaps)} irregular gap(s): {'; '.join(geometry.gaps[:MAX_NAMED])}"
        f"{'' if len(geometry.gaps) <= MAX_NAMED else f' and {len(geometry.gaps) - MAX_NAMED} more'}"
        " (positions along the slice normal; use resample_nonuniform / --resample-nonuniform to resample "
        "onto a uniform grid)"
    )
