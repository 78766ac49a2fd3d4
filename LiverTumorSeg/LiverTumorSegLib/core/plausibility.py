"""Plausibility gates: a CT must look like a CT in HU, a labelmap like a labelmap, before any result is computed.

A model given an all-air image, stored values without their Rescale Intercept, a labelmap or a NaN slice still
returns a liver volume; these gates refuse such inputs first, with one line naming the input, what was found
and what to do. Compute core (numpy, SimpleITK); the command line, the worker and the Slicer module call them.

``check_ct(image, what)`` refuses (``ImplausibleInputError``) an image that is not 3D and scalar, holds
non-finite values, or (``forceable``: a caller may let the user override these) is constant or nearly so,
holds few distinct values (a labelmap or mask), lies far outside -1100..3100 HU, has no air near -1000 HU or
no soft tissue. Voxels below -1100 HU that all share the minimum value are padding outside the scanner's
field of view (-2048, -3024...) and are left out of the statistics. It returns warnings (a single slice).
Statistics are taken on up to ``SAMPLE_VOXELS`` voxels drawn with a fixed seed; the finite and constant checks
see every voxel.

``check_labelmap(labels, what, allowed)`` refuses an image whose values are not integers of the documented
set, and (with ``reference``) one that is not on the CT's grid.

The DICOM loader attaches what it noticed about rescaling (missing Rescale tags, unusual slopes) to the image
as the metadata key ``RESCALE_NOTE_KEY``; the CT gate names it when it refuses the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.core.grid import check_same_grid

PLAUSIBLE_HU = (-1100.0, 3100.0)  # CT values outside this (padding apart) mean wrong rescaling
MAX_OUTSIDE_FRACTION = 0.01  # more voxels than this outside PLAUSIBLE_HU: refused
AIR_MAX_HU = -850.0  # air and lung lie at or below this
MIN_AIR_FRACTION = 0.001
SOFT_TISSUE_HU = (-200.0, 300.0)  # fat, water, parenchyma, blood, contrast-enhanced organs
MIN_SOFT_TISSUE_FRACTION = 0.01
MIN_SPREAD_HU = 100.0  # 0.5th to 99.5th percentile narrower than this: nearly constant
MIN_DISTINCT_VALUES = 20  # fewer distinct values than this: a labelmap or mask
SAMPLE_VOXELS = 2_000_000
RESCALE_NOTE_KEY = "LiverTumorSeg_RescaleNote"
LABELMAP_VALUES = (0, 1, 2)  # background, liver parenchyma, liver tumor


class ImplausibleInputError(ValueError):
    """An input refused by a gate; ``forceable`` when the user may run on it anyway (it might still be a CT)."""

    def __init__(self, message: str, forceable: bool = False) -> None:
        super().__init__(message)
        self.forceable = forceable


@dataclass(frozen=True)
class HUStatistics:
    """What the gate saw (HU): percentiles of the sampled voxels, padding left out, and tissue fractions."""

    minimum_hu: float
    maximum_hu: float
    p005_hu: float  # 0.5th percentile
    p995_hu: float  # 99.5th percentile
    distinct_values: int  # in the sample
    outside_fraction: float  # of voxels outside PLAUSIBLE_HU
    air_fraction: float  # at or below AIR_MAX_HU
    soft_tissue_fraction: float  # within SOFT_TISSUE_HU
    padding_hu: float | None  # the minimum value left out as padding, if any


def _hu(value: float) -> str:
    return f"{value:.0f}" if abs(value) < 1e6 else f"{value:.3g}"


def _sample(array: np.ndarray) -> np.ndarray:
    """Up to ``SAMPLE_VOXELS`` voxels of ``array`` (all of them when fewer), drawn with a fixed seed."""
    flat = array.reshape(-1)
    if flat.size <= SAMPLE_VOXELS:
        return flat
    return flat[np.random.default_rng(0).integers(0, flat.size, SAMPLE_VOXELS)]


def hu_statistics(array: np.ndarray) -> HUStatistics:
    """Statistics of a finite HU array of any shape (see ``HUStatistics``)."""
    minimum, maximum = float(array.min()), float(array.max())
    sample = _sample(array).astype(np.float64)
    padding = minimum if minimum < PLAUSIBLE_HU[0] and np.all(sample[sample < PLAUSIBLE_HU[0]] == minimum) else None
    body = sample[sample != padding] if padding is not None else sample
    if body.size == 0:
        body = sample
    low, high = np.percentile(body, [0.5, 99.5])
    return HUStatistics(
        minimum_hu=minimum, maximum_hu=maximum, p005_hu=float(low), p995_hu=float(high),
        distinct_values=int(np.unique(sample).size),
        outside_fraction=float(np.mean((body < PLAUSIBLE_HU[0]) | (body > PLAUSIBLE_HU[1]))),
        air_fraction=float(np.mean(body <= AIR_MAX_HU)),
        soft_tissue_fraction=float(np.mean((body >= SOFT_TISSUE_HU[0]) & (body <= SOFT_TISSUE_HU[1]))),
        padding_hu=padding,
    )


def _rescale_note(image: sitk.Image) -> str:
    return image.GetMetaData(RESCALE_NOTE_KEY) if image.HasMetaDataKey(RESCALE_NOTE_KEY) else ""


def check_scalar_3d(image: sitk.Image, what: str) -> None:
    """``ImplausibleInputError`` unless ``image`` is a 3D image with one value per voxel."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ImplausibleInputError(
            f"{what}: expected a 3D scalar volume, got a {image.GetDimension()}D image with "
            f"{image.GetNumberOfComponentsPerPixel()} value(s) per voxel")


def check_finite(array: np.ndarray, what: str) -> None:
    """``ImplausibleInputError`` naming how many voxels (and which slices, z index) are NaN or infinite."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    bad = ~finite
    nan_count, inf_count = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    slices = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1)) if array.ndim == 3 else np.array([])
    shown = ", ".join(str(int(z)) for z in slices[:8]) + (f" and {slices.size - 8} more" if slices.size > 8 else "")
    found = " and ".join(part for part in (f"{nan_count} NaN" if nan_count else "",
                                           f"{inf_count} infinite" if inf_count else "") if part)
    raise ImplausibleInputError(
        f"{what}: {found} voxel value(s) of {array.size} (slice(s) z = {shown}); the file is damaged or was "
        "written by a broken conversion: re-export the CT")


def _refuse(what: str, found: str, note: str, advice: str) -> ImplausibleInputError:
    cause = f" ({note})" if note else ""
    return ImplausibleInputError(f"{what}: {found}{cause}; {advice}", forceable=True)


def _hu_problem(stats: HUStatistics, is_integer: bool) -> tuple[str, str] | None:
    """(what was found, what to do) for HU statistics that do not look like a CT, or None."""
    if stats.minimum_hu == stats.maximum_hu:
        return f"all voxels {_hu(stats.minimum_hu)} HU", "this is no CT image: re-export the series"
    if stats.distinct_values < MIN_DISTINCT_VALUES:
        kind = "integer " if is_integer else ""
        return (f"an {kind}image with only {stats.distinct_values} distinct values "
                f"({_hu(stats.minimum_hu)}..{_hu(stats.maximum_hu)}), like a labelmap or mask",
                "give the CT image in HU, not a segmentation")
    value_range = f"values {_hu(stats.p005_hu)}..{_hu(stats.p995_hu)} HU (0.5th-99.5th percentile)"
    if stats.p995_hu - stats.p005_hu < MIN_SPREAD_HU:
        return f"a nearly constant image, {value_range}", "this is no CT image: check the input"
    if stats.outside_fraction > MAX_OUTSIDE_FRACTION:
        return (f"{100 * stats.outside_fraction:.0f}% of the voxels outside {_hu(PLAUSIBLE_HU[0])}.."
                f"{_hu(PLAUSIBLE_HU[1])} HU, {value_range}",
                "the values are not Hounsfield units (wrong Rescale Slope/Intercept?)")
    if stats.air_fraction < MIN_AIR_FRACTION:
        return (f"no air near -1000 HU, {value_range}",
                "the values look shifted (Rescale Intercept missing?) or the image is not a CT in HU")
    if stats.soft_tissue_fraction < MIN_SOFT_TISSUE_FRACTION:
        return (f"almost no soft tissue ({100 * stats.soft_tissue_fraction:.1f}% of the voxels within "
                f"{_hu(SOFT_TISSUE_HU[0])}..{_hu(SOFT_TISSUE_HU[1])} HU), {value_range}",
                "the image holds no body (all air?) or is not a CT in HU")
    return None


LIVER_EXTENT_MM = 120.0  # a scan shorter than a small liver cannot hold all of it (craniocaudal 120-200 mm)


def check_ct(image: sitk.Image, what: str, *, force: bool = False) -> list[str]:
    """Refuse ``image`` (``ImplausibleInputError``, one line starting with ``what``) unless it looks like a CT in
    HU (see the module docstring); ``force`` skips the HU checks (``forceable`` errors), never the 3D and finite
    checks. Returns warnings for an image that passes but limits the results (a single slice; a scan shorter than
    ``LIVER_EXTENT_MM`` along any axis, which cannot hold a whole liver)."""
    check_scalar_3d(image, what)
    array = sitk.GetArrayViewFromImage(image)
    check_finite(array, what)
    if not force:
        is_integer = np.issubdtype(array.dtype, np.integer)
        problem = _hu_problem(hu_statistics(array), is_integer)
        if problem is not None:
            raise _refuse(what, problem[0], _rescale_note(image), problem[1])
    warnings = []
    thin = [axis for axis, count in zip("xyz", image.GetSize(), strict=True) if count == 1]
    extent_mm = min(count * spacing for count, spacing in zip(image.GetSize(), image.GetSpacing(), strict=True))
    if thin:
        warnings.append(f"{what} has a single slice ({image.GetSize()[0]} x {image.GetSize()[1]} x "
                        f"{image.GetSize()[2]} voxels): volumes and 3D measurements are meaningless")
    elif extent_mm < LIVER_EXTENT_MM:
        warnings.append(f"{what} covers only {extent_mm:.0f} mm along its shortest axis (a liver is about "
                        f"{LIVER_EXTENT_MM:.0f} mm or more from dome to tip): the liver is probably cut, so volumes, "
                        "the FLR ratio and the lesion count are of the scanned part only")
    return warnings


def check_labelmap(labels: sitk.Image, what: str, allowed: Sequence[int] = LABELMAP_VALUES,
                   reference: sitk.Image | None = None, reference_what: str = "the CT") -> None:
    """Refuse (``ImplausibleInputError``) a labelmap that is not 3D scalar, holds values other than the
    integers ``allowed`` (a CT passed as labels holds hundreds of HU values), or, with ``reference``, is not on
    ``reference``'s voxel grid."""
    check_scalar_3d(labels, what)
    array = sitk.GetArrayViewFromImage(labels)
    check_finite(array, what)
    unexpected = ~np.isin(array, np.asarray(allowed))
    if unexpected.any():
        values = np.unique(array[unexpected])
        shown = ", ".join(_hu(float(v)) for v in values[:6]) + (f" ... ({values.size} values)" if values.size > 6
                                                                 else "")
        looks_like_ct = values.size >= MIN_DISTINCT_VALUES or float(array.min()) < -100
        advice = ("it looks like a CT image, not a labelmap: give the segmentation (labels.nrrd)" if looks_like_ct
                  else "give the labelmap written by livertumor segment")
        allowed_text = ", ".join(str(v) for v in allowed)
        raise ImplausibleInputError(f"{what}: values [{shown}] besides {allowed_text}; {advice}")
    if reference is not None:
        try:
            check_same_grid(labels, reference, what, reference_what)
        except ValueError as error:
            raise ImplausibleInputError(f"{error}; give the labelmap computed on this CT") from error
