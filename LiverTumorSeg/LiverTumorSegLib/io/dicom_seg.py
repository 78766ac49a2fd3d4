"""DICOM Segmentation (SEG) of the pipeline's labelmaps: written with highdicom, any SEG read back voxel for voxel.

Labelmap convention: 0 background, 1 liver parenchyma, 2 liver tumor, on the CT's voxel grid (LPS, mm).

Written SEG (``write_segmentation``: BINARY, one frame per source slice and segment, empty frames omitted):

- segment 1 "Liver" = the **whole liver** (labels 1 and 2). The SNOMED CT concept Liver (SCT 10200004) is
  the organ; the report's liver volume is the total liver volume (docs/definitions.md), which then equals the
  volume of the segment it references (Slicer's Segment Statistics on the loaded SEG reproduce the SR); and
  that is what other liver segmentations (TotalSegmentator, most references) deliver. The segments overlap:
  reading lets the tumor win, so the SEG decodes back to the same 0/1/2 labelmap. (Inside Slicer the
  extension's own "Liver" segment is the parenchyma; ``liver_segments(whole_liver=False)`` writes that.)
- segment 2 "Liver tumor" = label 2, kept even when empty so that "0 mL, 0 lesions" has a segment to reference.

Names, codes (category, type, anatomic region) and colours come from ``Resources/segment_terminology.json``
(``core.terminology``). The SEG carries the source's patient and study, its frame of reference, a reference
to every source instance (Referenced Series Sequence) and, per frame, the source slice (or Enhanced CT frame)
it was derived from; every segment names the algorithm (``Algorithm``: name, version, the models' ids and
versions as parameters; family Artificial Intelligence).

``read_segmentation`` turns any BINARY, FRACTIONAL or LABELMAP SEG (ours, dcmqi's, Slicer's) into a labelmap
on a reference grid without resampling: each frame's Image Position (Patient) must land on a voxel and its
rows and columns must step one voxel along a grid axis (flipped or transposed references are followed);
anything else is a one-line ``ValueError`` naming the SEG, the frame and the problem. Overlapping segments
resolve to the highest label.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from highdicom.sr.coding import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from LiverTumorSegLib.core.grid import Grid, check_same_grid
from LiverTumorSegLib.core.terminology import Code, SegmentDefinition, load_segment_definitions
from LiverTumorSegLib.io.dicom_checks import slice_axes
from LiverTumorSegLib.io.dicom_io import series_geometry

SOFTWARE_VERSION = "0.1.0"  # pyproject.toml [project] version (Testing/io/test_dicom_seg.py keeps them equal)
MANUFACTURER = "LiverTumorAnalysis"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC")
# A frame position may miss a voxel centre by this fraction of a voxel (DS values hold 16 characters and other
# writers round, e.g. dcmqi -235.2 for -235.199997); a frame's row/column step may differ from one voxel by this.
POSITION_TOLERANCE_VOXELS = 0.01
STEP_TOLERANCE_VOXELS = 0.01
# Segmented property types the pipeline reads as liver (1) or tumor (2): SNOMED CT and legacy SNOMED RT codes.
LIVER_TYPE_CODES = frozenset({("10200004", "SCT"), ("T-62000", "SRT")})
TUMOR_TYPE_CODES = frozenset({("108369006", "SCT"), ("86049000", "SCT"), ("14799000", "SCT"), ("M-80003", "SRT")})


def coded(code: Code) -> CodedConcept:
    """A terminology ``Code`` as highdicom's ``CodedConcept``."""
    return CodedConcept(code.value, code.scheme, code.meaning)


# --- what is written --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegSegment:
    """One SEG segment: the labelmap values it covers and its terminology definition (name, codes, colour)."""

    label_values: tuple[int, ...]
    definition: SegmentDefinition

    @property
    def label(self) -> str:
        return self.definition.name


def liver_segments(whole_liver: bool = True) -> tuple[SegSegment, SegSegment]:
    """The SEG's "Liver" (labels 1 and 2, or 1 alone when not ``whole_liver``) and "Liver tumor" (2) segments."""
    definitions = load_segment_definitions()
    return (SegSegment((1, 2) if whole_liver else (1,), definitions["liver"]),
            SegSegment((2,), definitions["liver_tumor"]))


@dataclass(frozen=True)
class Algorithm:
    """What produced a segmentation: name, version, parameters (e.g. the models' ids and versions), the DICOM
    Segment Algorithm Type (AUTOMATIC, or SEMIAUTOMATIC for a corrected result) and whether demo models ran."""

    name: str
    version: str
    parameters: tuple[tuple[str, str], ...] = ()
    algorithm_type: str = "AUTOMATIC"
    demo: bool = False

    def __post_init__(self) -> None:
        if self.algorithm_type not in ALGORITHM_TYPES:
            raise ValueError(f"algorithm type must be one of {ALGORITHM_TYPES}, got {self.algorithm_type!r}")
        if not self.name.strip() or not self.version.strip():
            raise ValueError("an algorithm needs a name and a version")

    def parameter_strings(self) -> list[str]:
        """``["key=value", ...]`` (how the SEG's Algorithm Parameters and the SR's TID 4019 list them)."""
        return [f"{key}={value}" for key, value in self.parameters]

    def identification(self) -> hd.AlgorithmIdentificationSequence:
        """highdicom Algorithm Identification (family Artificial Intelligence)."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name[:64], family=codes.cid7162.ArtificialIntelligence, version=self.version[:64],
            parameters=dict(self.parameters) or None)


CASCADE_NAME = "LiverTumorAnalysis SegResNet cascade"


def model_version(model: Mapping) -> str:
    """A model's version for the record: its manifest ``version``, else its weights' checksum (sha256 or md5,
    first 12 hex digits), else "unversioned"."""
    if model.get("version"):
        return str(model["version"])
    for algorithm in ("sha256", "md5"):
        if model.get(algorithm):
            return f"{algorithm}:{str(model[algorithm])[:12]}"
    return "unversioned"


def cascade_algorithm(models: Mapping[str, Mapping | None], *, corrected: bool = False) -> Algorithm:
    """The cascade as an ``Algorithm`` from the ``models`` object of the worker's results.json
    (``{"liver": {"id", "sha256", "demo_only", ...}, "tumor": {...} | None}``). ``corrected``: the labels were
    edited after the cascade (SEMIAUTOMATIC)."""
    parameters = tuple((f"{stage}_model", f"{model['id']} {model_version(model)}")
                       for stage, model in models.items() if model)
    demo = any(bool(model.get("demo_only")) for model in models.values() if model)
    return Algorithm(CASCADE_NAME, SOFTWARE_VERSION, parameters, "SEMIAUTOMATIC" if corrected else "AUTOMATIC",
                     demo)


@dataclass(frozen=True)
class SourceSeries:
    """The CT a SEG is derived from: ``images`` in the order highdicom gets them, the 3D ``grid`` they form and
    ``frame_z``, the labelmap slice (z index) of each source frame (one per single-frame image, or every frame
    of one Enhanced CT image), in that order."""

    images: list[Dataset]
    grid: Grid
    frame_z: np.ndarray
    series_uid: str


REQUIRED_SOURCE_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                        "FrameOfReferenceUID")


def _describe(ds: Dataset, index: int) -> str:
    """A dataset's file name (or its position in the list) for messages."""
    filename = getattr(ds, "filename", None)
    return Path(filename).name if isinstance(filename, str) and filename else f"source dataset {index + 1}"


def _check_source_uids(datasets: Sequence[Dataset]) -> None:
    """``ValueError`` naming the file when a source lacks a UID the SEG must reference, or when the sources do not
    share one study, series and frame of reference."""
    if not datasets:
        raise ValueError("no source datasets given")
    for index, ds in enumerate(datasets):
        for keyword in REQUIRED_SOURCE_UIDS:
            if not str(ds.get(keyword, "") or "").strip():
                raise ValueError(f"{_describe(ds, index)}: empty or missing {keyword}; a DICOM SEG cannot reference it")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds[keyword].value) for ds in datasets}
        if len(values) != 1:
            raise ValueError(f"the source datasets have {len(values)} different {keyword} values; give one series")


def source_series(datasets: Sequence[Dataset]) -> SourceSeries:
    """The source CT series of a SEG: its datasets (headers suffice; any order) checked and ordered as the loader
    orders them (``dicom_io.series_geometry``), so the grid is the loaded volume's. Single-frame images, or one
    multi-frame Enhanced CT image. One-line ``ValueError`` (a ``DicomInputError`` for geometry) otherwise."""
    _check_source_uids(datasets)
    series_uid = str(datasets[0].SeriesInstanceUID)
    multi_frame = [ds for ds in datasets if "PerFrameFunctionalGroupsSequence" in ds]
    if multi_frame and len(datasets) != 1:
        raise ValueError(f"source series {series_uid} has {len(datasets)} files of which {len(multi_frame)} "
                         "multi-frame: a DICOM SEG can be derived from one multi-frame image or from single-frame images")
    members = [(Path(_describe(ds, i)), ds) for i, ds in enumerate(datasets)]
    geometry, _ = series_geometry(members, Path("."), f"source series {series_uid}")
    first = datasets[0]
    grid = Grid((int(first.Columns), int(first.Rows), len(geometry.order)), geometry.spacing_mm,
                geometry.origin_mm, geometry.direction)
    if multi_frame:  # frames stay in the file's order; frame k holds labelmap slice frame_z[k]
        return SourceSeries([first], grid, np.argsort(np.asarray(geometry.order)), series_uid)
    images = [datasets[i] for i in geometry.order]
    return SourceSeries(images, grid, np.arange(len(images)), series_uid)


def _label_array(labels: sitk.Image, segments: Sequence[SegSegment]) -> np.ndarray:
    """(z, y, x) integer array of ``labels``; ``ValueError`` for a non-integer pixel type or undescribed values."""
    array = sitk.GetArrayFromImage(labels)
    if not np.issubdtype(array.dtype, np.integer) or labels.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"labels must be an integer labelmap, got {labels.GetPixelIDTypeAsString()}")
    described = {0, *(value for segment in segments for value in segment.label_values)}
    unknown = sorted(set(np.unique(array).tolist()) - described)
    if unknown:
        raise ValueError(f"label values {unknown} are not covered by any segment (allowed: {sorted(described)})")
    return array


def _segment_description(number: int, segment: SegSegment, algorithm: Algorithm) -> hd.seg.SegmentDescription:
    definition = segment.definition
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.label,
        segmented_property_category=coded(definition.category),
        segmented_property_type=coded(definition.type),
        algorithm_type=algorithm.algorithm_type,
        algorithm_identification=algorithm.identification(),
        tracking_uid=hd.UID(),
        tracking_id=segment.label,
        anatomic_regions=[coded(definition.anatomic_region)] if definition.anatomic_region else None,
        display_color=hd.color.CIELabColor.from_rgb(*definition.color_rgb255),
    )


def series_description(what: str, algorithm: Algorithm) -> str:
    """A result series' description (64 characters at most), marking demo models."""
    return (f"{what}, DEMO models, not for clinical use" if algorithm.demo else f"{what} ({MANUFACTURER})")[:64]


def result_identity(series_number: int, series_instance_uid: str | None = None,
                    sop_instance_uid: str | None = None) -> dict:
    """highdicom keyword arguments shared by our SEG and SR: new UIDs unless given, instance 1, the manufacturer
    and UTF-8 (``ISO_IR 192``: some sources carry an empty Specific Character Set, which highdicom refuses)."""
    return {"series_instance_uid": series_instance_uid or hd.UID(), "series_number": series_number,
            "sop_instance_uid": sop_instance_uid or hd.UID(), "instance_number": 1, "manufacturer": MANUFACTURER,
            "specific_character_set": "ISO_IR 192"}


def write_segmentation(
    labels: sitk.Image,
    source_datasets: Sequence[Dataset],
    algorithm: Algorithm,
    *,
    segments: Sequence[SegSegment] | None = None,
    series_number: int = 901,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """A binary DICOM SEG of ``labels`` (integer labelmap, x y z, on the grid of ``source_datasets``).

    ``source_datasets``: the CT series (headers suffice, any order; see ``source_series``). ``segments``:
    default ``liver_segments()``; segment k+1 covers the voxels whose label is in ``segments[k].label_values``.
    One-line ``ValueError`` when the labels are off the source grid or hold values no segment covers.
    """
    segments = tuple(segments) if segments is not None else liver_segments()
    if not segments:
        raise ValueError("no segments to write")
    source = source_series(source_datasets)
    check_same_grid(labels, source.grid, "labels", f"the source series {source.series_uid}")
    values = _label_array(labels, segments)
    masks = np.stack([np.isin(values, segment.label_values) for segment in segments], axis=-1).astype(np.uint8)
    descriptions = [_segment_description(number, segment, algorithm) for number, segment in enumerate(segments, 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom: single-component person names etc.
        return hd.seg.Segmentation(
            source_images=source.images,
            pixel_array=masks[source.frame_z],  # (source frames, rows, columns, segments)
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            **result_identity(series_number, series_instance_uid, sop_instance_uid),
            manufacturer_model_name="LiverTumorSeg",
            software_versions=SOFTWARE_VERSION,
            device_serial_number="0",
            content_label="LIVER_SEG",
            content_description=f"{algorithm.name} {algorithm.version}"[:64],
            series_description=series_description("Liver segmentation", algorithm),
            omit_empty_frames=True,
        )


# --- reading ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentInfo:
    """What a SEG says about one segment; codes as (value, scheme, meaning)."""

    number: int
    label: str
    category: tuple[str, str, str] | None
    property_type: tuple[str, str, str] | None


def _code(sequence) -> tuple[str, str, str] | None:
    if not sequence:
        return None
    item = sequence[0]
    return (str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


def segment_infos(seg: Dataset) -> list[SegmentInfo]:
    """The segments of ``seg``'s Segment Sequence, in file order."""
    return [SegmentInfo(int(item.SegmentNumber), str(item.get("SegmentLabel", "")),
                        _code(item.get("SegmentedPropertyCategoryCodeSequence")),
                        _code(item.get("SegmentedPropertyTypeCodeSequence")))
            for item in seg.SegmentSequence]


def pipeline_label_map(seg: Dataset) -> dict[int, int]:
    """Segment number -> pipeline label (liver 1, tumor 2, anything else 0 = ignored) from the segments' property
    type codes, so that SEGs with other segment orders (or only a liver) decode to the 0/1/2 convention."""
    mapping = {}
    for info in segment_infos(seg):
        code = (info.property_type[0], info.property_type[1]) if info.property_type else None
        mapping[info.number] = 1 if code in LIVER_TYPE_CODES else 2 if code in TUMOR_TYPE_CODES else 0
    return mapping


def load_seg(source: str | Path | Dataset) -> Dataset:
    """The SEG data set of a file (or the data set itself); ``ValueError`` naming the file when it is none."""
    if isinstance(source, Dataset):
        seg = source
    else:
        try:
            seg = pydicom.dcmread(str(source))
        except (pydicom.errors.InvalidDicomError, OSError) as error:
            raise ValueError(f"{source}: not a readable DICOM file ({error})") from error
    if str(seg.get("SOPClassUID", "")) not in (SEGMENTATION_STORAGE, LABELMAP_SEGMENTATION_STORAGE):
        raise ValueError(f"{_name(source)}: not a DICOM Segmentation (SOP Class {seg.get('SOPClassUID', 'missing')})")
    return seg


def _name(source: str | Path | Dataset) -> str:
    if isinstance(source, Dataset):
        filename = getattr(source, "filename", None)
        return str(filename) if isinstance(filename, str) and filename else f"SEG {source.get('SOPInstanceUID', '?')}"
    return str(source)


def read_segmentation(source: str | Path | Dataset, reference_image: sitk.Image | None = None, *,
                      label_for_segment: Mapping[int, int] | None = None) -> sitk.Image:
    """A labelmap (uint8, or uint16 for labels above 255; x y z, LPS) from a DICOM SEG file or data set.

    With ``reference_image`` the labelmap lies on its grid (see the module docstring); without, on a grid built
    from the frames alone (their in-plane matrix and the extent of their positions along the normal).
    Segment n gets label ``label_for_segment[n]`` (default n; 0 ignores the segment; ``pipeline_label_map``
    gives the 0/1/2 convention); where segments overlap the highest label wins.
    """
    masks, grid = read_segment_masks(source, reference_image)
    mapping = dict(label_for_segment) if label_for_segment is not None else {n: n for n in masks}
    missing = sorted(set(masks) - set(mapping))
    if missing:
        raise ValueError(f"{_name(source)}: no label given for segment(s) {missing}")
    labels = np.zeros(tuple(reversed(grid.size)), np.uint8 if max(mapping.values(), default=0) < 256 else np.uint16)
    for number in sorted(masks, key=lambda n: mapping[n]):
        if mapping[number]:
            labels[masks[number]] = mapping[number]
    return _image_on(grid, labels)


def read_segment_masks(source: str | Path | Dataset, reference_image: sitk.Image | None = None
                       ) -> tuple[dict[int, np.ndarray], Grid]:
    """Per segment number a boolean (z, y, x) mask on the grid (see ``read_segmentation``), and that grid."""
    seg = load_seg(source)
    name = _name(source)
    frames = _frames(seg, name)
    grid = Grid.of(reference_image) if reference_image is not None else _grid_from_frames(seg, frames, name)
    masks = {info.number: np.zeros(tuple(reversed(grid.size)), dtype=bool) for info in segment_infos(seg)}
    for index, frame in enumerate(frames):
        if frame.segment not in masks:
            raise ValueError(f"{name}: frame {index + 1} references segment {frame.segment}, which is not described")
        _paste(masks[frame.segment], frame, grid, f"{name}: frame {index + 1}")
    return masks, grid


@dataclass(frozen=True)
class _Frame:
    """One decoded SEG frame: boolean pixels (rows, columns), segment number, position and axes (LPS mm)."""

    pixels: np.ndarray
    segment: int
    position: np.ndarray
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) as in DICOM


def _functional_group(seg: Dataset, index: int, keyword: str):
    """Item of functional group ``keyword`` for frame ``index``: per-frame first, then shared."""
    per_frame = seg.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame) and keyword in per_frame[index]:
        return per_frame[index][keyword][0]
    shared = seg.get("SharedFunctionalGroupsSequence")
    if shared and keyword in shared[0]:
        return shared[0][keyword][0]
    return None


def _decoded_frames(seg: Dataset, name: str) -> np.ndarray:
    """(frames, rows, columns) pixel values of the SEG (bits unpacked for a binary SEG)."""
    try:
        pixels = seg.pixel_array
    except Exception as error:  # noqa: BLE001 - decoders raise many types; name the file
        raise ValueError(f"{name}: cannot decode the segmentation pixel data ({error})") from error
    return pixels.reshape(int(seg.get("NumberOfFrames", 1)), int(seg.Rows), int(seg.Columns))


def _frame_geometry(seg: Dataset, index: int, name: str) -> dict:
    position = _functional_group(seg, index, "PlanePositionSequence")
    orientation = _functional_group(seg, index, "PlaneOrientationSequence")
    measures = _functional_group(seg, index, "PixelMeasuresSequence")
    if position is None or orientation is None or measures is None:
        raise ValueError(f"{name}: frame {index + 1} lacks its plane position, orientation or pixel spacing")
    return {"position": np.array([float(v) for v in position.ImagePositionPatient]),
            "orientation": tuple(float(v) for v in orientation.ImageOrientationPatient),
            "pixel_spacing": tuple(float(v) for v in measures.PixelSpacing)}


def _frames(seg: Dataset, name: str) -> list[_Frame]:
    """Every frame of the SEG as a boolean mask with its segment number and geometry (a LABELMAP frame gives one
    mask per segment value present)."""
    pixels = _decoded_frames(seg, name)
    kind = str(seg.get("SegmentationType", "BINARY"))
    labelmap = str(seg.SOPClassUID) == LABELMAP_SEGMENTATION_STORAGE or kind == "LABELMAP"
    frames: list[_Frame] = []
    for index in range(pixels.shape[0]):
        geometry = _frame_geometry(seg, index, name)
        if labelmap:
            frames += [_Frame(pixels[index] == value, int(value), **geometry)
                       for value in np.unique(pixels[index]) if value != 0]
            continue
        identification = _functional_group(seg, index, "SegmentIdentificationSequence")
        if identification is None:
            raise ValueError(f"{name}: frame {index + 1} has no Segment Identification")
        if kind == "FRACTIONAL":
            mask = pixels[index].astype(np.float64) >= float(seg.MaximumFractionalValue) / 2.0
        else:
            mask = pixels[index] != 0
        frames.append(_Frame(mask, int(identification.ReferencedSegmentNumber), **geometry))
    return frames


def _index_matrix(grid: Grid) -> np.ndarray:
    """3x3 matrix taking a voxel index step (i, j, k) to an LPS displacement (mm)."""
    return np.asarray(grid.direction, dtype=float).reshape(3, 3) @ np.diag(grid.spacing_mm)


def _image_on(grid: Grid, array_zyx: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetOrigin(grid.origin_mm)
    image.SetSpacing(grid.spacing_mm)
    image.SetDirection(grid.direction)
    return image


def _grid_from_frames(seg: Dataset, frames: Sequence[_Frame], name: str) -> Grid:
    """A grid covering the SEG frames: their in-plane matrix, their extent along the normal (slice spacing from
    Spacing Between Slices, else the smallest step between frames, else the slice thickness)."""
    if not frames:
        raise ValueError(f"{name}: the SEG has no frames and no reference image was given")
    axes = slice_axes(frames[0].orientation, name)
    heights = np.array([frame.position @ axes[2] for frame in frames])
    unique = np.unique(np.round(heights, 4))
    measures = _functional_group(seg, 0, "PixelMeasuresSequence")
    between = float(measures.get("SpacingBetweenSlices") or 0) if measures is not None else 0.0
    if between > 0:
        step = between
    elif len(unique) > 1:
        step = float(np.min(np.diff(unique)))
    else:
        step = float(measures.get("SliceThickness") or 1.0) if measures is not None else 1.0
    lowest = frames[int(np.argmin(heights))]
    row_spacing, column_spacing = lowest.pixel_spacing
    return Grid((int(seg.Columns), int(seg.Rows), int(round((unique[-1] - unique[0]) / step)) + 1),
                (column_spacing, row_spacing, step), tuple(float(v) for v in lowest.position),
                tuple(float(v) for v in axes.T.ravel()))


def _unit_axis(step: np.ndarray, where: str, what: str) -> tuple[int, int]:
    """(grid axis, +1/-1) of an index step that must be one voxel along one axis; else ``ValueError``."""
    axis = int(np.argmax(np.abs(step)))
    sign = 1 if step[axis] > 0 else -1
    expected = np.zeros(3)
    expected[axis] = sign
    if not np.allclose(step, expected, atol=STEP_TOLERANCE_VOXELS):
        raise ValueError(f"{where} {what} do not follow the reference grid (index step {np.round(step, 4).tolist()}); "
                         "spacing or orientation differ, and a SEG is not resampled")
    return axis, sign


def _paste(mask: np.ndarray, frame: _Frame, grid: Grid, where: str) -> None:
    """OR ``frame`` into ``mask`` (z, y, x) where its pixels fall on ``grid``; ``ValueError`` when they do not."""
    axes = slice_axes(frame.orientation, where)
    row_spacing, column_spacing = frame.pixel_spacing
    matrix = _index_matrix(grid)
    start = np.linalg.solve(matrix, frame.position - np.asarray(grid.origin_mm))
    axis_c, sign_c = _unit_axis(np.linalg.solve(matrix, axes[0] * column_spacing), where, "columns")
    axis_r, sign_r = _unit_axis(np.linalg.solve(matrix, axes[1] * row_spacing), where, "rows")
    if axis_c == axis_r:
        raise ValueError(f"{where}: rows and columns run along the same axis of the reference grid")
    axis_k = 3 - axis_c - axis_r
    rounded = np.round(start)
    if np.any(np.abs(start - rounded) > POSITION_TOLERANCE_VOXELS):
        raise ValueError(f"{where} at {np.round(frame.position, 3).tolist()} mm is not on a voxel of the reference "
                         f"grid (index {np.round(start, 3).tolist()})")
    rows, columns = frame.pixels.shape
    column_index = int(rounded[axis_c]) + sign_c * np.arange(columns)
    row_index = int(rounded[axis_r]) + sign_r * np.arange(rows)
    k = int(rounded[axis_k])
    inside_c = (column_index >= 0) & (column_index < grid.size[axis_c])
    inside_r = (row_index >= 0) & (row_index < grid.size[axis_r])
    k_inside = 0 <= k < grid.size[axis_k]
    kept = frame.pixels[np.ix_(inside_r, inside_c)] if k_inside else np.zeros(0, bool)
    if int(kept.sum()) != int(frame.pixels.sum()):
        raise ValueError(f"{where} has segmented pixels outside the reference grid")
    if not k_inside:
        return
    index: list = [None, None, None]  # numpy axes (z, y, x) are grid axes (2, 1, 0)
    index[2 - axis_c] = column_index[inside_c][None, :]
    index[2 - axis_r] = row_index[inside_r][:, None]
    index[2 - axis_k] = k
    mask[tuple(index)] |= kept


def segment_volume_ml(mask_zyx: np.ndarray, grid: Grid) -> float:
    """Volume (mL) of a boolean mask on ``grid``."""
    return float(np.count_nonzero(mask_zyx)) * math.prod(grid.spacing_mm) / 1000.0


__all__ = ["Algorithm", "SegSegment", "SegmentInfo", "SourceSeries", "cascade_algorithm", "liver_segments",
           "load_seg", "model_version", "pipeline_label_map", "read_segment_masks", "read_segmentation",
           "segment_infos", "source_series", "write_segmentation"]
