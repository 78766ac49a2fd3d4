"""KU Leuven liver and liver-lesion pipelines (pyliverlesionseg 0.3) on SimpleITK images.

Inputs are SimpleITK CT images in Hounsfield units with any axis-aligned orientation; outputs are
``uint8`` masks on exactly the input CT's grid (same size, spacing, origin, direction).  Internally
the CT is re-oriented to LPS (what ``pymirc.fileio.DicomVolume`` delivers to the package: array
axes ``(x, y, z)`` pointing to patient Left, Posterior, Superior) and flipped to RAS where the
package does so before calling a network.  Every place where this code does something other than
the package is marked ``DEVIATION`` in a comment.

Reference: ``pyliverlesionseg/cnn_liver_lesion_seg_CT_MR_functions.py`` (``cnn_liver_lesion_seg_CT_MR_main``,
``crop_ct_image``, ``cnn_liver_pred_postprocess``, ``cnn_lesion_pred_postprocess``) and
``pyliverlesionseg/general.py`` (``DeepVoxNet.predict``), ``sampling/samplecreator.py``
(``ExtractSegment3D2``).  The model cards (``Resources/Models/cards/kuleuven_*.md``) describe both pipelines and every deviation.

torch is not imported here: the stages take a ``predict`` function (one network pass on one patch), which
:mod:`LiverTumorSegLib.models.kuleuven.stages` builds from the loaded network.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorSegLib.core.grid import same_grid
from LiverTumorSegLib.models.kuleuven.config import (
    LESION_CONFIG,
    LIVER_CONFIG,
    UNetConfig,
    smallest_input_size,
)
from LiverTumorSegLib.models.kuleuven.resample import (
    binary_zoom_any,
    median_filter3,
    package_zoom_to_shape,
    zoom3d,
    zoom3d_first_voxel_index,
    zoom3d_output_shape,
    zoom3d_region,
    zoom3d_rows_touching,
)

__all__ = [
    "CropBox",
    "LiverResult",
    "LesionResult",
    "InsufficientCoverageError",
    "orient_lps",
    "image_to_xyz",
    "xyz_to_image",
    "body_crop_box",
    "normalise_ct",
    "segment_liver",
    "segment_lesions",
    "predict_centred_patch",
    "predict_tiled",
    "postprocess_liver_3mm",
]

log = logging.getLogger(__name__)

LIVER_SPACING_MM = np.array(LIVER_CONFIG.voxel_spacing_mm, dtype=np.float64)  # header/voxel_size (3, 3, 3)
LIVER_MEDIAN_SPACING_MM = LIVER_SPACING_MM / 2.0  # package: target_voxsize_liver_1 = voxel_size / 2
LESION_SPACING_MM = np.array(LESION_CONFIG.voxel_spacing_mm, dtype=np.float64)  # header/voxel_size (1, 1, 3)
CROP_MAX_SIZE_MM = (489.0, 408.0, 408.0)  # package: crop_ct_image(size_mm_max=[489, 408, 408])
TISSUE_HU = -150.0  # package: tissue_th
LUNG_HU = -600.0  # package: lung_th
DOME_MARGIN_MM = 70.0  # package: liver_dome_margin_mm
PROBABILITY_THRESHOLD = 0.5  # package: Th = 0.5 (liver and lesion)
PATCH_PAD_VALUE = 0.0  # ExtractSegment3D2(default_value=0)
LESION_OUTSIDE_VALUE = -0.5  # img_mask_liv[liv_vol_dil == 0] = -0.5
MIN_Z_EXTENT_MM = 9.0  # DEVIATION: refuse scans shorter than three 3 mm slices (see segment_liver)


class InsufficientCoverageError(ValueError):
    """The CT covers too little of the body in z for the liver network (see ``min_z_extent_mm``)."""


Predict = Callable[[np.ndarray], np.ndarray]  # patch (X, Y, Z) float32 -> probabilities (x, y, z)
TileProgress = Callable[[int, int], None]  # (tiles done, tiles in all)


def orient_lps(image: sitk.Image) -> sitk.Image:
    """Permute / flip axes so that index x, y, z increase towards patient L, P, S (identity direction).

    Raises:
        NotImplementedError: for oblique images (the package also assumes axis-aligned volumes).
    """
    out = sitk.DICOMOrient(image, "LPS")
    if not np.allclose(np.array(out.GetDirection()).reshape(3, 3), np.eye(3), atol=1e-4):
        raise NotImplementedError(f"oblique image (direction {out.GetDirection()}) is not supported")
    return out


def image_to_xyz(image: sitk.Image, dtype: Any = None) -> np.ndarray:
    """Voxel array indexed ``[x, y, z]``: a transposed *view* of SimpleITK's ``(z, y, x)`` copy (no
    second full-volume copy; slices of it are copied only where needed)."""
    arr = sitk.GetArrayFromImage(image)
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    return arr.transpose(2, 1, 0)


def zeros_xyz(image: sitk.Image, dtype: Any) -> np.ndarray:
    """Zero array indexed ``[x, y, z]`` whose memory is in SimpleITK's ``(z, y, x)`` order, so that
    :func:`xyz_to_image` needs no copy."""
    nx, ny, nz = image.GetSize()
    return np.zeros((nz, ny, nx), dtype=dtype).transpose(2, 1, 0)


def xyz_to_image(arr_xyz: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """SimpleITK image from an ``[x, y, z]`` array with the geometry of ``reference``."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr_xyz.transpose(2, 1, 0)))
    img.CopyInformation(reference)
    return img


def to_grid_of(mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Nearest-neighbour resampling of a label image onto ``reference``'s grid as uint8 (exact for
    pure axis permutations / flips of the same grid; a cast only when the grids are identical)."""
    if same_grid(mask, reference):
        out = sitk.Cast(mask, sitk.sitkUInt8)
        out.CopyInformation(reference)
        return out
    return sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def zoomed_geometry(image: sitk.Image, zoom: np.ndarray) -> sitk.Image:
    """Empty image with the geometry of ``zoom3d(image_array, zoom)`` (pymirc's centred grid)."""
    size_in = np.array(image.GetSize())
    spacing_in = np.array(image.GetSpacing())
    size_out = zoom3d_output_shape(tuple(size_in), zoom)
    first = np.array([zoom3d_first_voxel_index(int(n), float(z)) for n, z in zip(size_in, zoom, strict=True)])
    out = sitk.Image([int(s) for s in size_out], sitk.sitkUInt8)
    out.SetSpacing(tuple(float(s) for s in spacing_in / np.where(zoom == 1, 1.0, zoom)))
    out.SetDirection(image.GetDirection())
    out.SetOrigin(image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in first)))
    return out


def normalise_ct(hu: np.ndarray) -> np.ndarray:
    """Package CT normalisation ``clip(HU / 1000, -0.2, 0.2) * 2.5`` -> [-0.5, 0.5] (float32)."""
    return (np.clip(hu.astype(np.float32) / 1000.0, -0.2, 0.2) * 2.5).astype(np.float32)


# --------------------------------------------------------------------------------------------
# crop (DEVIATION: replaces crop_ct_image, which needs lungs and hips in the field of view)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CropBox:
    """Half-open voxel box ``[start, stop)`` on the LPS-oriented CT, axes ``(x, y, z)``."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    z_rule: str = ""

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    def size_mm(self, spacing_mm: np.ndarray) -> np.ndarray:
        return (np.array(self.stop) - np.array(self.start)) * np.asarray(spacing_mm)


def _largest_component_bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    lbl, n = ndimage.label(mask)
    if n == 0:
        return None
    counts = np.bincount(lbl.ravel())
    counts[0] = 0
    return ndimage.find_objects(lbl)[int(np.argmax(counts)) - 1]


def _lung_dome_level(hu_sub: np.ndarray, body_sub: np.ndarray, voxel_ml: float) -> int | None:
    """z index (on the sub-sampled grid) of the lowest slice where the lungs have >= 50 % of their
    largest axial area, or ``None`` if no lung-sized internal air (>= 250 mL) is found.

    Lungs = the largest 3D component of air (< -600 HU) inside the per-slice hole-filled body,
    plus any other component with >= 25 % of its volume.  Mirrors the package's idea (air profile
    above half its range marks the liver dome) without requiring both lungs and hips.
    """
    filled = np.stack([ndimage.binary_fill_holes(body_sub[:, :, k]) for k in range(body_sub.shape[2])], axis=2)
    internal_air = (hu_sub < LUNG_HU) & filled
    lbl, n = ndimage.label(internal_air)
    if n == 0:
        return None
    counts = np.bincount(lbl.ravel())
    counts[0] = 0
    if counts.max() * voxel_ml < 250.0:
        return None
    keep = np.nonzero(counts >= 0.25 * counts.max())[0]
    area = np.isin(lbl, keep).sum(axis=(0, 1))
    return int(np.nonzero(area >= 0.5 * area.max())[0][0])


def body_crop_box(
    hu_xyz: np.ndarray,
    spacing_mm: np.ndarray,
    max_size_mm: tuple[float, float, float] = CROP_MAX_SIZE_MM,
    analysis_spacing_mm: float = 3.0,
) -> CropBox:
    """Crop box for the liver network that works on any field of view.

    DEVIATION from ``crop_ct_image`` (which locates the liver dome from the lungs and the lower
    limit from the hip bones and raises on scans without them):

    1. body = largest 3D component of ``HU > -150`` after one binary erosion (package step
       ``bbox1``; here on a grid sub-sampled to ~``analysis_spacing_mm`` in-plane for speed) ->
       x/y/z box of the body, widened by the eroded voxel on each side.
    2. z: the whole body extent is kept if it is <= ``max_size_mm[2]`` (408 mm, the z size of the
       liver network's single output patch).  Longer scans: if lungs are found, the top is put
       70 mm above the lung level (lowest slice with >= 50 % of the maximal lung area; the package
       uses dome + 70 mm the same way), otherwise at the top of the body; the bottom is
       ``top - 408 mm`` (the package also trims from the bottom).
    3. x/y: box of the largest component of ``HU > -150`` eroded by a ~5 voxel cube inside the z
       range (package step ``bbox2``), trimmed symmetrically to at most 489 x 408 mm.
    """
    spacing_mm = np.asarray(spacing_mm, dtype=np.float64)
    step = [max(1, int(round(analysis_spacing_mm / s))) if i < 2 else 1 for i, s in enumerate(spacing_mm)]
    sub = hu_xyz[:: step[0], :: step[1], :: step[2]]
    tissue = sub > TISSUE_HU
    box1 = _largest_component_bbox(ndimage.binary_erosion(tissue))
    if box1 is None:
        box1 = tuple(slice(0, n) for n in sub.shape)
    # undo the one-voxel erosion so that no slice / column of the body is lost (a 3-slice scan
    # would otherwise keep only its middle slice)
    box1 = tuple(slice(max(0, b.start - 1), min(n, b.stop + 1)) for b, n in zip(box1, sub.shape, strict=True))
    z0, z1 = box1[2].start, box1[2].stop
    max_slices = int(max_size_mm[2] // spacing_mm[2])
    z_rule = "whole body extent"
    if (z1 - z0) > max_slices:
        body = np.zeros_like(tissue)
        body[box1] = tissue[box1]
        level = _lung_dome_level(sub, body, float(np.prod(spacing_mm * np.array(step))) / 1000.0)
        if level is not None:
            top = min(z1, level + int(DOME_MARGIN_MM / spacing_mm[2]))
            z_rule = f"lungs found: top = lung level + {DOME_MARGIN_MM:g} mm, {max_size_mm[2]:g} mm window"
        else:
            top = z1
            z_rule = f"no lungs: top of scan, {max_size_mm[2]:g} mm window"
        z0, z1 = max(z0, top - max_slices), top
    sub_box = (box1[0], box1[1], slice(z0, z1))
    box2 = _largest_component_bbox(ndimage.binary_erosion(tissue[sub_box], np.ones((3, 3, 3), bool)))
    xy = []
    for axis in range(2):
        a0, a1 = box1[axis].start, box1[axis].stop
        if box2 is not None:  # undo the 3x3x3 erosion (1 voxel on each side)
            a0, a1 = max(a0, a0 + box2[axis].start - 1), min(a1, a0 + box2[axis].stop + 1)
        lo, hi = a0 * step[axis], min(hu_xyz.shape[axis], a1 * step[axis])
        max_vox = int(max_size_mm[axis] // spacing_mm[axis])
        if hi - lo > max_vox:
            excess = hi - lo - max_vox
            lo, hi = lo + excess // 2, hi - (excess - excess // 2)
        xy.append((lo, hi))
    return CropBox((xy[0][0], xy[1][0], z0), (xy[0][1], xy[1][1], z1), z_rule)


# --------------------------------------------------------------------------------------------
# DeepVoxNet.predict re-implementation
# --------------------------------------------------------------------------------------------
def extract_patch(vol: np.ndarray, centre: tuple[int, int, int], size: tuple[int, int, int], pad_value: float = PATCH_PAD_VALUE) -> np.ndarray:
    """``ExtractSegment3D2`` (subsample 1): voxels ``[c - s//2, c - s//2 + s)`` per axis, ``pad_value`` outside."""
    patch = np.full(size, pad_value, dtype=np.float32)
    src, dst = [], []
    for n, c, s in zip(vol.shape, centre, size, strict=True):
        lo = c - s // 2
        a, b = max(0, lo), min(n, lo + s)
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    patch[tuple(dst)] = vol[tuple(src)]
    return patch


@dataclass(frozen=True)
class _Placement:
    centre: tuple[int, int, int]  # sampling coordinate passed to ExtractSegment3D2
    dst: tuple[slice, slice, slice]  # where the output goes in the image
    src: tuple[slice, slice, slice]  # which part of the network output


def _placement(sampling_centre: tuple[int, ...], image_size: tuple[int, ...], cfg: UNetConfig) -> _Placement:
    """Output placement of ``DeepVoxNet.predict`` for one sampling coordinate (output scale 1)."""
    dst, src = [], []
    for c, n, n_in, n_out in zip(sampling_centre, image_size, cfg.input_size, cfg.output_size, strict=True):
        real_centre = c if n_in % 2 else c - 0.5  # "real spacial centre" for even input sizes
        start = real_centre - (n_out - 1) / 2
        if start != int(start):
            raise RuntimeError("non-integer output start; not possible for the published configs")
        start = int(start)
        end = start + n_out - 1
        under, over = max(0, -start), max(0, end - (n - 1))
        dst.append(slice(start + under, end - over + 1))
        src.append(slice(under, n_out - over))
    return _Placement(tuple(int(c) for c in sampling_centre), tuple(dst), tuple(src))  # type: ignore[arg-type]


def _fill_nan_nearest(prob: np.ndarray) -> np.ndarray:
    """``DeepVoxNet.predict``: voxels never written take the value of the nearest written voxel (EDT)."""
    nan = np.isnan(prob)
    if nan.any():
        idx = ndimage.distance_transform_edt(nan, return_distances=False, return_indices=True)
        prob = prob[tuple(idx)]
    return prob


def predict_centred_patch(vol: np.ndarray, predict: Callable[[np.ndarray], np.ndarray], cfg: UNetConfig) -> np.ndarray:
    """``DeepVoxNet(center_sampling=True).predict``: one patch at ``ceil((n - 1) / 2)``, output
    written around it, everything else filled from the nearest written voxel."""
    centre = tuple(math.ceil((n - 1) / 2) for n in vol.shape)
    pl = _placement(centre, vol.shape, cfg)
    out = predict(extract_patch(vol, pl.centre, cfg.input_size))
    prob = np.full(vol.shape, np.nan, dtype=np.float32)
    prob[pl.dst] = out[pl.src]
    return _fill_nan_nearest(prob)


@dataclass
class TilingStats:
    """Bookkeeping of :func:`predict_tiled`."""

    n_tiles: int = 0  # tiles the package runs
    n_network_passes: int = 0
    n_skipped_overwritten: int = 0  # exact: fully overwritten by a later tile
    n_skipped_outside_roi: int = 0  # DEVIATION (restrict_to_liver): output region outside the ROI
    n_constant_input: int = 0  # exact: constant patch -> cached constant output


def _tile_starts(n: int, seg: int) -> list[int]:
    """Tile starts of ``DeepVoxNet.predict`` along one axis: ``0, seg, 2 seg, ... < n`` plus
    ``n - seg`` if ``seg`` does not divide ``n``."""
    starts = list(range(0, n, seg))
    if n % seg:
        starts.append(n - seg)
    return starts


def _won_intervals(n: int, starts: list[int], seg: int) -> list[tuple[int, int]]:
    """For each start, the positions ``[a, b)`` along the axis where its tile's output survives.

    Tiles are written in lexicographic (x, y, z) order and every combination of starts exists, so
    the final value at voxel (x, y, z) comes from the tile (w_x(x), w_y(y), w_z(z)) where ``w`` is
    the *last* start along that axis whose tile covers the position.  With an appended ``n - seg``
    start, the last regular tile ``[k seg, n)`` wins nothing: it is fully overwritten.
    """
    winner = np.full(n, -1, dtype=np.int64)
    for i, s in enumerate(starts):
        winner[max(0, s):min(n, s + seg)] = i
    out = []
    for i in range(len(starts)):
        pos = np.nonzero(winner == i)[0]
        out.append((int(pos[0]), int(pos[-1]) + 1) if pos.size else (0, 0))
    return out


def predict_tiled(
    vol: np.ndarray,
    predict: Callable[[np.ndarray], np.ndarray],
    cfg: UNetConfig,
    roi: np.ndarray | None = None,
    stats: TilingStats | None = None,
    progress: TileProgress | None = None,
) -> np.ndarray:
    """``DeepVoxNet(center_sampling=False).predict`` on ``vol`` (x, y, z).

    Tiles of ``min(n, output_size)`` start at ``0, s, 2s, ...`` plus ``n - s`` when ``s`` does not
    divide ``n``; loop order x, y, z; later tiles overwrite earlier ones (as in the package).

    Exact shortcuts: (1) tiles whose output is completely overwritten later are not run
    (:func:`_won_intervals`); (2) a patch whose input is constant gives a constant output (valid
    padding, and the first normalisation maps it to exactly 0), computed once on the smallest valid
    patch.

    DEVIATION (only when ``roi`` is given): tiles whose *surviving* output region (the part not
    overwritten by later tiles) contains no ``roi`` voxel are not run and that region is set to
    probability 0; callers must then restrict the thresholded result to ``roi`` (the result inside
    ``roi`` is identical to the full run). ``progress(done, total)`` is called after every tile.
    """
    stats = stats if stats is not None else TilingStats()
    seg = [min(n, o) for n, o in zip(vol.shape, cfg.output_size, strict=True)]
    prob = np.full(vol.shape, np.nan, dtype=np.float32)
    constant_output: float | None = None
    starts = [_tile_starts(n, g) for n, g in zip(vol.shape, seg, strict=True)]
    won = [_won_intervals(n, st, g) for n, st, g in zip(vol.shape, starts, seg, strict=True)]
    total = math.prod(len(s) for s in starts)
    for ix, x in enumerate(starts[0]):
        for iy, y in enumerate(starts[1]):
            for iz, z in enumerate(starts[2]):
                if progress is not None:
                    progress(stats.n_tiles, total)
                stats.n_tiles += 1
                won_region = tuple(slice(*w[i]) for w, i in zip(won, (ix, iy, iz), strict=True))
                if any(sl.stop <= sl.start for sl in won_region):
                    stats.n_skipped_overwritten += 1  # exact: nothing of this tile survives
                    continue
                centre = tuple(math.ceil(s + (g - 1) / 2) for s, g in zip((x, y, z), seg, strict=True))
                pl = _placement(centre, vol.shape, cfg)
                if roi is not None and not roi[won_region].any():
                    prob[won_region] = 0.0  # DEVIATION: its surviving output lies outside the ROI
                    stats.n_skipped_outside_roi += 1
                    continue
                patch = extract_patch(vol, pl.centre, cfg.input_size)
                if np.all(patch == patch.flat[0]):
                    if constant_output is None:
                        small = smallest_input_size(cfg)
                        constant_output = float(predict(np.full(small, patch.flat[0], np.float32)).ravel()[0])
                        stats.n_network_passes += 1
                    prob[pl.dst] = constant_output
                    stats.n_constant_input += 1
                    continue
                prob[pl.dst] = predict(patch)[pl.src]
                stats.n_network_passes += 1
    if roi is not None:
        prob[np.isnan(prob)] = 0.0
    return _fill_nan_nearest(prob)


# --------------------------------------------------------------------------------------------
# liver stage
# --------------------------------------------------------------------------------------------
def postprocess_liver_3mm(prob: np.ndarray, threshold: float = PROBABILITY_THRESHOLD) -> np.ndarray:
    """``cnn_liver_pred_postprocess`` on the 3 mm grid (LPS): threshold > 0.5, erosion with the
    18-neighbourhood, largest 6-connected component, dilation with the 18-neighbourhood.

    DEVIATION: with no component left after erosion the package selects label 0 (the background)
    and returns the whole crop box as liver; here the result is empty.
    """
    ss = ndimage.iterate_structure(ndimage.generate_binary_structure(3, 2), 1).astype(int)
    eroded = ndimage.binary_erosion(prob > threshold, structure=ss).astype(int)
    lbl, n = ndimage.label(eroded, structure=ndimage.generate_binary_structure(3, 1))
    if n == 0:
        return np.zeros(prob.shape, dtype=bool)
    sizes = ndimage.sum(eroded, lbl, range(n + 1))
    largest = np.argsort(sizes)[-1]
    return ndimage.binary_dilation(lbl == largest, structure=ss)


@dataclass
class LiverResult:
    """Liver stage output.

    Attributes:
        mask: uint8 liver mask on the input CT grid.
        probability_3mm: float32 network probability on the 3 mm crop grid (LPS geometry).
        crop: crop box on the LPS-oriented CT.
        timings_s: wall seconds per step.
    """

    mask: sitk.Image
    probability_3mm: sitk.Image
    crop: CropBox
    timings_s: dict[str, float] = field(default_factory=dict)


def segment_liver(
    ct: sitk.Image, predict: Predict, *, min_z_extent_mm: float = MIN_Z_EXTENT_MM, crop: CropBox | None = None
) -> LiverResult:
    """The package's CT liver pipeline with a field-of-view independent crop.

    Steps (package order): crop (DEVIATION: :func:`body_crop_box`) -> ``zoom3d`` to 1.5 mm ->
    3x3x3 median filter -> ``zoom3d`` to 3 mm -> ``clip(HU/1000, -0.2, 0.2) * 2.5`` -> flip x, y
    (LPS -> RAS) -> one centred 189x162x162 patch -> flip back -> threshold / erosion / largest
    component / dilation -> ``ndimage.zoom`` (int16, corner-aligned) back to the crop -> paste.

    Args:
        ct: CT in HU, any axis-aligned orientation.
        predict: one pass of the liver network (:func:`LiverTumorSegLib.models.kuleuven.networks.predict_patch`).
        min_z_extent_mm: raise :class:`InsufficientCoverageError` if the scan is shorter (0 = off).
            Default 9 mm = three 3 mm slices: with fewer, the 18-neighbourhood erosion of the
            post-processing removes every voxel (the package would then return the whole crop box
            as "liver", see :func:`postprocess_liver_3mm`).  DEVIATION: the package has no such check.
        crop: use this box (on the LPS-oriented CT) instead of :func:`body_crop_box`, e.g. the box the
            package's own ``crop_ct_image`` returns (tools/compare_crop.py).
    """
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    ct_lps = orient_lps(ct)
    spacing = np.array(ct_lps.GetSpacing(), dtype=np.float64)
    hu = image_to_xyz(ct_lps, np.float32)
    z_extent_mm = hu.shape[2] * spacing[2]
    if z_extent_mm < min_z_extent_mm:
        raise InsufficientCoverageError(f"CT covers {z_extent_mm:.1f} mm in z < {min_z_extent_mm:.1f} mm required")
    box = crop if crop is not None else body_crop_box(hu, spacing)
    cropped = hu[box.slices]
    t["crop"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    zoom_1 = spacing / LIVER_MEDIAN_SPACING_MM  # package: voxsize_img / target_voxsize_liver_1
    zoom_2 = LIVER_MEDIAN_SPACING_MM / LIVER_SPACING_MM  # target_voxsize_liver_1 / target_voxsize_liver_2
    med = median_filter3(zoom3d(cropped, zoom_1, cval=0))
    x3 = normalise_ct(zoom3d(med, zoom_2, cval=0))
    del med
    t["resample_median_normalise"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    prob_ras = predict_centred_patch(x3[::-1, ::-1, :], predict, LIVER_CONFIG)
    prob = np.ascontiguousarray(prob_ras[::-1, ::-1, :])  # RAS -> LPS (flag_flip=True)
    t["network"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    liver_3mm = postprocess_liver_3mm(prob)
    back = package_zoom_to_shape(liver_3mm.astype(np.int16), cropped.shape) > 0
    full = zeros_xyz(ct_lps, np.uint8)
    full[box.slices] = back
    mask = to_grid_of(xyz_to_image(full, ct_lps), ct)
    crop_img = sitk.RegionOfInterest(ct_lps, [int(b - a) for a, b in zip(box.start, box.stop, strict=True)], [int(a) for a in box.start])
    geo = zoomed_geometry(zoomed_geometry(crop_img, zoom_1), zoom_2)
    prob_img = xyz_to_image(prob.astype(np.float32), geo)
    t["postprocess"] = time.perf_counter() - t3
    t["total"] = time.perf_counter() - t0
    return LiverResult(mask, prob_img, box, t)


# --------------------------------------------------------------------------------------------
# lesion stage
# --------------------------------------------------------------------------------------------
@dataclass
class LesionResult:
    """Lesion stage output.

    Attributes:
        mask: uint8 lesion mask on the input CT grid.
        probability: float32 probability on the cropped 1 x 1 x 3 mm grid (RAS array order as the
            package, geometry attached in LPS terms).
        tiling: tile counts.
        timings_s: wall seconds per step.
    """

    mask: sitk.Image
    probability: sitk.Image
    tiling: TilingStats
    timings_s: dict[str, float] = field(default_factory=dict)


def segment_lesions(ct: sitk.Image, liver_mask: sitk.Image, predict: Predict, *, restrict_to_liver: bool = True,
                    progress: TileProgress | None = None) -> LesionResult:
    """The package's CT lesion pipeline.

    Steps (package order): RAS flip -> ``clip(HU/1000, -0.2, 0.2) * 2.5`` on the whole CT ->
    ``zoom3d`` of image and liver mask to 1 x 1 x 3 mm -> mask > 0.5 -> dilation with the
    18-neighbourhood iterated twice (5x5x5 structure) -> outside = -0.5 -> crop to the dilated mask's
    box -> tiles of 92x84x42 (input 180x172x86, zero padded beyond the crop) -> threshold > 0.5 ->
    paste into the 1 x 1 x 3 mm volume -> ``ndimage.zoom(order=1) > 0`` back to the CT grid
    (float input, so any overlap counts) -> flip back to LPS.

    Args:
        ct: CT in HU.
        liver_mask: liver mask (non-zero = liver) on any grid covering the CT; resampled
            nearest-neighbour onto the CT grid.
        predict: one pass of the lesion network.
        progress: ``(tiles done, tiles in all)`` after every tile.
        restrict_to_liver: DEVIATION (default True): skip tiles whose output region holds no voxel of
            the dilated liver mask and keep lesions only inside that mask.  ``False`` runs every tile
            and keeps everything the network finds, as the package does.
    """
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    ct_lps = orient_lps(ct)
    spacing = np.array(ct_lps.GetSpacing(), dtype=np.float64)
    liver = image_to_xyz(to_grid_of(liver_mask != 0, ct_lps))
    hu_ras = image_to_xyz(ct_lps)[::-1, ::-1, :]  # package: np.flip(img_vol, (0, 1)); views, no copy
    liver_ras = liver[::-1, ::-1, :]
    ct_shape = hu_ras.shape
    zoom = spacing / LESION_SPACING_MM  # package: voxsize_img / target_voxsize_lesion
    rs_shape = zoom3d_output_shape(ct_shape, zoom)
    rs_geo = zoomed_geometry(ct_lps, zoom)
    empty_prob = xyz_to_image(np.zeros((1, 1, 1), np.float32), sitk.Image(1, 1, 1, sitk.sitkFloat32))
    found = ndimage.find_objects((liver_ras > 0).astype(np.uint8))
    if not found or found[0] is None:
        # DEVIATION: the package fails (np.min of an empty array); an empty liver gives no lesions.
        mask = to_grid_of(xyz_to_image(zeros_xyz(ct_lps, np.uint8), ct_lps), ct)
        t["total"] = time.perf_counter() - t0
        return LesionResult(mask, empty_prob, TilingStats(), t)
    # The package zooms the whole CT and mask; only the block around the liver matters (outside the
    # dilated mask everything becomes -0.5 and the crop is the dilated mask's box), so zoom3d is
    # evaluated on that block only - bit-identical values (kuleuven.resample.zoom3d_region).
    margin = 3  # 2 voxels of dilation + 1
    region = []
    for axis in range(3):
        r0, r1 = zoom3d_rows_touching(ct_shape[axis], float(zoom[axis]), found[0][axis].start, found[0][axis].stop)
        region.append(slice(max(0, r0 - margin), min(rs_shape[axis], r1 + margin)))
    region_t = tuple(region)
    liver_rs = zoom3d_region(liver_ras, zoom, region_t, transform=lambda b: (b > 0).astype(np.float32)) > 0.5
    ss2 = ndimage.iterate_structure(ndimage.generate_binary_structure(3, 2), 2).astype(int)  # 18-nbh twice
    dil = ndimage.binary_dilation(liver_rs, structure=ss2) if liver_rs.any() else liver_rs
    t["preprocess"] = time.perf_counter() - t0
    if not dil.any():
        mask = to_grid_of(xyz_to_image(zeros_xyz(ct_lps, np.uint8), ct_lps), ct)
        t["total"] = time.perf_counter() - t0
        return LesionResult(mask, empty_prob, TilingStats(), t)
    box_local = ndimage.find_objects(dil.astype(np.uint8))[0]
    box = tuple(slice(reg.start + b.start, reg.start + b.stop) for reg, b in zip(region_t, box_local, strict=True))
    img_box = zoom3d_region(hu_ras, zoom, box, transform=normalise_ct)  # package: zoom3d(clip(HU/1000)...)
    del hu_ras
    dil_box = dil[box_local]
    masked = np.where(dil_box, np.clip(img_box, -0.5, 0.5), LESION_OUTSIDE_VALUE).astype(np.float32)
    t["preprocess"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    stats = TilingStats()
    prob = predict_tiled(masked, predict, LESION_CONFIG, roi=dil_box if restrict_to_liver else None, stats=stats,
                         progress=progress)
    t["network"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    lesion_box = prob > PROBABILITY_THRESHOLD
    if restrict_to_liver:
        lesion_box &= dil_box
    lesion_rs = np.zeros(rs_shape, dtype=bool)
    lesion_rs[box] = lesion_box
    lesion_ras = binary_zoom_any(lesion_rs, ct_shape)  # == ndimage.zoom(float, order=1) > 0
    lesion_lps = zeros_xyz(ct_lps, np.uint8)
    lesion_lps[...] = lesion_ras[::-1, ::-1, :]
    mask = to_grid_of(xyz_to_image(lesion_lps, ct_lps), ct)
    # probability map geometry: the RAS-ordered 1x1x3 grid is the LPS grid with x and y reversed
    n_rs = np.array(rs_shape)
    start_lps = [n_rs[0] - box[0].stop, n_rs[1] - box[1].stop, box[2].start]
    size = [box[0].stop - box[0].start, box[1].stop - box[1].start, box[2].stop - box[2].start]
    prob_geo = sitk.RegionOfInterest(rs_geo, [int(s) for s in size], [int(s) for s in start_lps])
    prob_img = xyz_to_image(np.ascontiguousarray(prob[::-1, ::-1, :]), prob_geo)
    t["postprocess"] = time.perf_counter() - t2
    t["total"] = time.perf_counter() - t0
    return LesionResult(mask, prob_img, stats, t)
