"""Liver-then-tumor cascade: a CT (``SimpleITK.Image``, HU) -> 0/1/2 labelmap on the CT's own grid.

1. Liver stage at the liver model's (coarse) spacing: preprocess by its manifest entry, sliding-window
   inference, ``argmax == entry.liver_label()``; on that coarse grid keep the largest 26-connected
   component and fill holes (3D, then slice by slice across the axial axis: intrahepatic vessels).
2. Crop the CT to the liver's bounding box plus ``crop_margin_mm``; bring the liver mask onto the crop
   grid (linear interpolation of the binary mask, threshold 0.5: a smooth surface instead of the coarse
   voxels' staircase; largest component again). Tumor stage on the crop at the tumor model's fine
   spacing with the inputs its entry lists (``("ct", "liver_mask")``: the mask nearest-neighbour
   resampled), argmax, the tumor label brought back to the crop grid by nearest neighbour; tumors are
   kept inside the liver, and 26-connected components below ``min_tumor_ml`` are removed.
3. The crop's labels are pasted into an all-background labelmap with exactly the input CT's size,
   origin, spacing and direction: 0 background, 1 liver parenchyma, 2 tumor.

Nothing is resampled at full resolution except the crop; no float64 copy of the CT is made.

A model with a ``stage`` (``LoadedModel.stage``: a publisher's own pipeline, e.g. the KU Leuven liver and lesion
models) replaces steps 1 or 2's preprocessing and inference: the liver stage gets the CT, the tumor stage the whole
CT and the cascade's liver mask on the CT's grid; both answer a mask on the CT's grid, to which the same rules apply
(largest liver component; tumors inside the liver and at least ``min_tumor_ml``).
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorSegLib.core.measurements import (
    Lesion,
    axial_axis,
    connected_components,
    measure_labelmap,
    voxel_volume_ml,
)
from LiverTumorSegLib.core.options import MIN_TUMOR_ML

if TYPE_CHECKING:
    import torch

    from LiverTumorSegLib.models.networks import LoadedModel

ProgressCallback = Callable[[str, float, str], None]


def keep_tumors_in_liver(tumor: sitk.Image, liver: sitk.Image, min_tumor_ml: float) -> sitk.Image:
    """The cascade's tumor rules: tumor voxels inside the liver, 26-connected components of at least
    ``min_tumor_ml`` (at the images' spacing). Both inputs 0/1 uint8 on one grid; returns 0/1 uint8 on it."""
    min_voxels = math.ceil(min_tumor_ml / voxel_volume_ml(tumor) - 1e-9) if min_tumor_ml > 0 else 0
    return sitk.Cast(connected_components(sitk.And(tumor, liver), min_voxels) > 0, sitk.sitkUInt8)


class NoLiverFoundWarning(UserWarning):
    """The liver stage found no liver: the labelmap is empty and the tumor stage was skipped."""


@dataclass
class CascadeResult:
    """Labelmap on the input grid (uint8 0/1/2), lesion table, volumes (mL), timings (s), device used."""

    labels: sitk.Image
    lesions: list[Lesion]
    timings_s: dict[str, float]
    device: str
    liver_volume_ml: float = 0.0
    tumor_volume_ml: float = 0.0
    crop_index_size: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    stages: list[str] = field(default_factory=list)


class _Progress:
    """Monotonic overall progress: maps a stage's own 0..1 onto its span of the whole run."""

    def __init__(self, callback: ProgressCallback | None, cancel: threading.Event | None) -> None:
        self.callback, self.cancel, self.last = callback, cancel, 0.0

    def report(self, stage: str, fraction: float, message: str) -> None:
        self.last = max(self.last, min(max(fraction, 0.0), 1.0))
        if self.callback is not None:
            self.callback(stage, self.last, message)

    def span(self, stage: str, start: float, end: float, message: str) -> Callable[[float], None]:
        return lambda fraction: self.report(stage, start + (end - start) * fraction, message)

    def check_cancel(self) -> None:
        from LiverTumorSegLib.core.inference import InferenceCancelled

        if self.cancel is not None and self.cancel.is_set():
            raise InferenceCancelled("cascade cancelled")


def _fill_holes_slicewise(mask: np.ndarray, array_axis: int) -> np.ndarray:
    """Fill 2D holes of a boolean (z, y, x) array in every slice across ``array_axis``."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    plane = [slice(None)] * 3
    plane[array_axis] = 1
    structure[tuple(plane)] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_fill_holes(mask, structure=structure)


def clean_liver_mask(mask: sitk.Image, slicewise: bool = True) -> sitk.Image:
    """Largest 26-connected component, 3D hole filling, then per axial slice (uint8 0/1, same grid)."""
    largest = sitk.Cast(connected_components(mask) == 1, sitk.sitkUInt8)
    filled = sitk.BinaryFillhole(largest, fullyConnected=False, foregroundValue=1)
    if not slicewise:
        return filled
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(filled)
    if not stats.GetLabels():
        return filled
    x0, y0, z0, sx, sy, sz = stats.GetBoundingBox(1)
    array = sitk.GetArrayFromImage(filled)
    box = (slice(z0, z0 + sz), slice(y0, y0 + sy), slice(x0, x0 + sx))
    array[box] = _fill_holes_slicewise(array[box].astype(bool), 2 - axial_axis(mask))
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(mask)
    return out


def liver_crop_region(
    liver: sitk.Image, ct: sitk.Image, margin_mm: float
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(index, size) in ``ct`` voxels (x, y, z) of the liver's bounding box plus ``margin_mm``.

    ``liver`` is a binary mask on any grid (the coarse model grid); its box's 8 outer corners are mapped
    through physical space, so oblique grids are handled. ``None`` if the mask is empty.
    """
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(liver > 0, sitk.sitkUInt8))
    if not stats.GetLabels():
        return None
    box = stats.GetBoundingBox(1)
    low, high = np.asarray(box[:3]) - 0.5, np.asarray(box[:3]) + np.asarray(box[3:]) - 0.5
    corners = [
        ct.TransformPhysicalPointToContinuousIndex(
            liver.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
        )
        for corner in np.array(np.meshgrid(*zip(low, high, strict=True))).reshape(3, -1).T
    ]
    corners = np.asarray(corners)
    margin = margin_mm / np.asarray(ct.GetSpacing())
    start = np.maximum(np.floor(corners.min(axis=0) - margin + 0.5), 0).astype(int)
    stop = np.minimum(np.ceil(corners.max(axis=0) + margin - 0.5), np.asarray(ct.GetSize()) - 1).astype(int)
    if np.any(stop < start):
        return None
    return tuple(int(v) for v in start), tuple(int(v) for v in stop - start + 1)


def mask_to_grid(mask: sitk.Image, reference: sitk.Image, smooth: bool) -> sitk.Image:
    """Binary ``mask`` onto ``reference``'s grid (uint8 0/1): linear + threshold 0.5, or nearest."""
    if not smooth:
        return sitk.Resample(
            sitk.Cast(mask, sitk.sitkUInt8),
            reference,
            sitk.Transform(),
            sitk.sitkNearestNeighbor,
            0,
            sitk.sitkUInt8,
        )
    values = sitk.Resample(
        sitk.Cast(mask, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    return sitk.Cast(values >= 0.5, sitk.sitkUInt8)


def _labels_to_mask(labels: torch.Tensor, label: int, affine: torch.Tensor) -> sitk.Image:
    """Model-space labels (x, y, z) -> binary sitk mask (uint8) of ``label`` with the model affine."""
    from LiverTumorSegLib.core.preprocessing import metatensor_to_sitk

    return metatensor_to_sitk((labels == label).numpy().astype(np.uint8), affine=affine)


def _run_model(
    model: LoadedModel,
    image,
    device,
    sw_batch_size: int,
    progress: Callable[[float], None],
    cancel: threading.Event | None,
) -> torch.Tensor:
    from LiverTumorSegLib.core.inference import infer_labels

    entry = model.entry
    return infer_labels(
        image,
        model.module,
        roi_size=entry.roi_size,
        overlap=entry.sw_overlap,
        device=device,
        activation=entry.output_activation,
        sw_batch_size=sw_batch_size,
        progress=progress,
        cancel=cancel,
    )


def liver_stage(
    ct: sitk.Image,
    liver: LoadedModel,
    device,
    sw_batch_size: int,
    progress: _Progress,
    span: tuple[float, float],
    timings: dict[str, float],
) -> sitk.Image:
    """Liver mask (uint8 0/1) on the liver model's grid: inference, largest component, holes filled."""
    from LiverTumorSegLib.core.preprocessing import preprocess_ct

    start, end = span
    if liver.stage is not None:  # the publisher's own pipeline (models.kuleuven.stages)
        return _pipeline_stage(liver, ct, None, device, progress, "liver", span, "segmenting the liver", timings)
    tick = time.perf_counter()
    progress.report("liver", start, "preparing the CT for the liver model")
    image = preprocess_ct(ct, liver.entry)
    affine = image.affine.clone()
    timings["liver_preprocess"] = time.perf_counter() - tick
    progress.check_cancel()
    tick = time.perf_counter()
    labels = _run_model(
        liver,
        image,
        device,
        sw_batch_size,
        progress.span(
            "liver", start + 0.1 * (end - start), start + 0.85 * (end - start), "segmenting the liver"
        ),
        progress.cancel,
    )
    del image
    timings["liver_inference"] = time.perf_counter() - tick
    tick = time.perf_counter()
    mask = clean_liver_mask(_labels_to_mask(labels, liver.entry.liver_label(), affine))
    timings["liver_postprocess"] = time.perf_counter() - tick
    progress.report("liver", end, "liver mask ready")
    return mask


def _pipeline_stage(model: LoadedModel, ct: sitk.Image, liver: sitk.Image | None, device, progress: _Progress,
                    stage: str, span: tuple[float, float], message: str, timings: dict[str, float]) -> sitk.Image:
    """``model.stage`` on ``ct`` (a mask on its grid) on the torch ``device``, its progress mapped into ``span``."""
    start, end = span
    tick = time.perf_counter()
    progress.report(stage, start, f"{message} ({model.entry.id})")
    mask = model.stage(ct, liver, progress.span(stage, start, end, message), progress.cancel, device)
    timings[f"{stage}_inference"] = time.perf_counter() - tick
    progress.report(stage, end, f"{stage} stage done")
    return mask


def tumor_stage(
    ct_crop: sitk.Image,
    liver_crop: sitk.Image,
    tumor: LoadedModel,
    device,
    sw_batch_size: int,
    progress: _Progress,
    span: tuple[float, float],
    timings: dict[str, float],
) -> sitk.Image:
    """Tumor mask (uint8 0/1) on the crop grid, before the inside-liver and minimum-volume rules."""
    import torch

    from LiverTumorSegLib.core.preprocessing import preprocess_ct, preprocess_mask

    start, end = span
    if tumor.stage is not None:
        return _pipeline_stage(tumor, ct_crop, liver_crop, device, progress, "tumor", span,
                               "segmenting tumors in the liver", timings)
    tick = time.perf_counter()
    progress.report("tumor", start, "preparing the liver region for the tumor model")
    channels = []
    for name in tumor.entry.input_channels:
        if name == "ct":
            channels.append(preprocess_ct(ct_crop, tumor.entry))
        elif name == "liver_mask":
            channels.append(preprocess_mask(liver_crop, tumor.entry))
        else:
            raise ValueError(f"model {tumor.entry.id!r}: unknown input channel {name!r} (ct, liver_mask)")
    affine = channels[0].affine.clone()
    image = torch.cat([c.as_tensor() for c in channels], dim=0)
    del channels
    timings["tumor_preprocess"] = time.perf_counter() - tick
    progress.check_cancel()
    tick = time.perf_counter()
    labels = _run_model(
        tumor,
        image,
        device,
        sw_batch_size,
        progress.span(
            "tumor",
            start + 0.1 * (end - start),
            start + 0.9 * (end - start),
            "segmenting tumors in the liver",
        ),
        progress.cancel,
    )
    del image
    timings["tumor_inference"] = time.perf_counter() - tick
    tumor_label = int(tumor.entry.labels.get("tumor", 1))
    return mask_to_grid(_labels_to_mask(labels, tumor_label, affine), ct_crop, smooth=False)


def _assemble(ct: sitk.Image, crop_labels: np.ndarray, region) -> sitk.Image:
    """Paste (z, y, x) crop labels at ``region`` (index, size in x, y, z) into an empty CT-grid labelmap."""
    size = ct.GetSize()
    full = np.zeros((size[2], size[1], size[0]), dtype=np.uint8)
    if region is not None:
        (x0, y0, z0), (sx, sy, sz) = region
        full[z0 : z0 + sz, y0 : y0 + sy, x0 : x0 + sx] = crop_labels
    labels = sitk.GetImageFromArray(full)
    labels.CopyInformation(ct)
    return labels


def _crop_labels(
    ct: sitk.Image,
    coarse_liver: sitk.Image,
    region,
    tumor: LoadedModel | None,
    device,
    sw_batch_size: int,
    min_tumor_ml: float,
    report: _Progress,
    span: tuple[float, float],
    timings: dict[str, float],
) -> np.ndarray:
    """(z, y, x) uint8 labels of the crop ``region``: liver 1, tumors inside it (>= min_tumor_ml) 2."""
    tick = time.perf_counter()
    ct_crop = sitk.RegionOfInterest(ct, region[1], region[0])
    liver_crop = sitk.Cast(
        connected_components(mask_to_grid(coarse_liver, ct_crop, smooth=True)) == 1, sitk.sitkUInt8
    )
    timings["crop"] += time.perf_counter() - tick
    crop_labels = sitk.GetArrayFromImage(liver_crop)
    if tumor is None:
        return crop_labels
    if tumor.stage is not None:  # the publisher's pipeline sees the whole CT, as it would without our crop
        liver_full = sitk.Paste(sitk.Image(ct.GetSize(), sitk.sitkUInt8), liver_crop, liver_crop.GetSize(),
                                [0, 0, 0], region[0])
        liver_full.CopyInformation(ct)
        tumor_full = tumor_stage(ct, liver_full, tumor, device, sw_batch_size, report, span, timings)
        tumor_crop = sitk.RegionOfInterest(tumor_full, region[1], region[0])
    else:
        tumor_crop = tumor_stage(ct_crop, liver_crop, tumor, device, sw_batch_size, report, span, timings)
    tick = time.perf_counter()
    kept = keep_tumors_in_liver(tumor_crop, liver_crop, min_tumor_ml)
    crop_labels[sitk.GetArrayViewFromImage(kept) > 0] = 2
    timings["tumor_postprocess"] = time.perf_counter() - tick
    return crop_labels


def run_cascade(
    ct: sitk.Image,
    liver: LoadedModel,
    tumor: LoadedModel | None,
    *,
    device: str = "auto",
    sw_batch_size: int = 1,
    min_tumor_ml: float = MIN_TUMOR_ML,
    crop_margin_mm: float = 10.0,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> CascadeResult:
    """Run the cascade on ``ct`` (3D, HU, LPS geometry); see the module docstring.

    ``progress(stage, fraction, message)``: stage in ``liver``/``tumor``/``done``, overall fraction 0..1
    (monotonic). ``cancel``: checked between windows and stages; raises ``InferenceCancelled``.
    Returns labels on exactly ``ct``'s grid, the lesion table (ids by decreasing volume), volumes (mL).
    """
    from LiverTumorSegLib.core.inference import select_device

    total_tick = time.perf_counter()
    torch_device = select_device(device)
    report = _Progress(progress, cancel)
    timings: dict[str, float] = {}
    liver_end = 0.45 if tumor is not None else 0.9
    coarse_liver = liver_stage(ct, liver, torch_device, sw_batch_size, report, (0.0, liver_end), timings)
    report.check_cancel()
    tick = time.perf_counter()
    region = liver_crop_region(coarse_liver, ct, crop_margin_mm)
    if region is None:
        warnings.warn(
            f"model {liver.entry.id!r} found no liver in this CT; the labelmap is empty",
            NoLiverFoundWarning,
            stacklevel=2,
        )
        crop_labels = None
    else:
        timings["crop"] = time.perf_counter() - tick
        crop_labels = _crop_labels(
            ct,
            coarse_liver,
            region,
            tumor,
            torch_device,
            sw_batch_size,
            min_tumor_ml,
            report,
            (liver_end, 0.95),
            timings,
        )
    report.check_cancel()
    labels = _assemble(ct, crop_labels, region)
    measured = measure_labelmap(_crop_image(labels, region))
    timings["total"] = time.perf_counter() - total_tick
    report.report("done", 1.0, "segmentation finished")
    return CascadeResult(
        labels=labels,
        lesions=measured.lesions,
        timings_s=timings,
        device=str(torch_device),
        liver_volume_ml=measured.liver_volume_ml,
        tumor_volume_ml=measured.tumor_volume_ml,
        crop_index_size=region,
        stages=["liver"] + (["tumor"] if tumor is not None else []),
    )


def _crop_image(labels: sitk.Image, region) -> sitk.Image:
    """The labelmap's region (measurements there equal those of the whole: outside is background)."""
    return labels if region is None else sitk.RegionOfInterest(labels, region[1], region[0])
