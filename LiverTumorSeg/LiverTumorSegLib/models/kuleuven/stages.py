"""The KU Leuven pipelines as cascade stages: ``stage(ct, liver_mask, progress, cancel, device) -> mask``.

``core.cascade`` runs a model whose manifest entry names a ``pipeline`` through ``LoadedModel.stage``
instead of its own sliding-window inference. The liver stage ignores ``liver_mask``; the lesion stage needs
it (any liver stage's mask on the CT's grid). Both return a uint8 0/1 ``SimpleITK.Image`` on exactly the
CT's grid. ``progress(fraction)`` runs from 0 to 1; ``cancel`` (a ``threading.Event``) is checked before
every network pass and raises ``core.inference.InferenceCancelled``; ``device`` (a ``torch.device``) is where the
network runs (patches go there and come back; the pipelines themselves run on the CPU).

The package assumes axis-aligned volumes. An oblique CT is resampled (linear) onto an axis-aligned LPS grid
with its spacing that covers it, and the mask comes back to the CT's grid by nearest neighbour.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.models.kuleuven import pipeline

Stage = Callable[..., sitk.Image]  # (ct, liver_mask | None, progress(fraction), cancel | None, torch.device)


def _predictor(module, cancel: threading.Event | None, device) -> pipeline.Predict:
    """One network pass on one patch on ``device`` (the module is moved there), the cancel flag checked first."""
    from LiverTumorSegLib.core.inference import InferenceCancelled
    from LiverTumorSegLib.models.kuleuven.networks import predict_patch

    module.to(device)

    def predict(patch: np.ndarray) -> np.ndarray:
        if cancel is not None and cancel.is_set():
            raise InferenceCancelled("cancelled by the user")
        return predict_patch(module, patch)

    return predict


def is_axis_aligned(image: sitk.Image) -> bool:
    """Whether every axis of ``image`` runs along a patient axis (a permutation with flips)."""
    direction = np.abs(np.array(image.GetDirection()).reshape(3, 3))
    return bool(np.allclose(np.sort(direction, axis=None)[-3:], 1.0, atol=1e-4))


def axis_aligned_grid(image: sitk.Image) -> sitk.Image:
    """An empty LPS-aligned grid with ``image``'s spacing (in its own axis order) that covers ``image``."""
    size = np.array(image.GetSize())
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
               for corner in np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in size])).reshape(3, -1).T]
    low, high = np.min(corners, axis=0), np.max(corners, axis=0)
    spacing = np.array(image.GetSpacing())
    physical_order = np.argmax(np.abs(np.array(image.GetDirection()).reshape(3, 3)), axis=0)
    spacing_lps = np.empty(3)
    spacing_lps[physical_order] = spacing
    grid_size = np.ceil((high - low) / spacing_lps).astype(int)
    grid = sitk.Image([int(n) for n in grid_size], sitk.sitkUInt8)
    grid.SetSpacing([float(s) for s in spacing_lps])
    grid.SetOrigin([float(v) for v in low + spacing_lps / 2])
    return grid


def _on_aligned_grid(run: Callable[[sitk.Image, sitk.Image | None], sitk.Image], ct: sitk.Image,
                     liver: sitk.Image | None) -> sitk.Image:
    """``run`` on ``ct`` (and ``liver``) directly when axis-aligned, else on a covering axis-aligned grid."""
    if is_axis_aligned(ct):
        return run(ct, liver)
    grid = axis_aligned_grid(ct)
    ct_aligned = sitk.Resample(ct, grid, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    liver_aligned = None if liver is None else sitk.Resample(
        liver, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    mask = run(ct_aligned, liver_aligned)
    return sitk.Resample(mask, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def liver_stage(module) -> Stage:
    """The KU Leuven liver pipeline (``pipeline.segment_liver``) with the loaded liver network."""

    def stage(ct: sitk.Image, liver_mask: sitk.Image | None, progress: Callable[[float], None],
              cancel: threading.Event | None, device="cpu") -> sitk.Image:
        progress(0.0)
        predict = _predictor(module, cancel, device)
        mask = _on_aligned_grid(lambda image, _: pipeline.segment_liver(image, predict).mask, ct, None)
        progress(1.0)
        return mask

    return stage


def lesion_stage(module) -> Stage:
    """The KU Leuven lesion pipeline (``pipeline.segment_lesions``) with the loaded lesion network."""

    def stage(ct: sitk.Image, liver_mask: sitk.Image | None, progress: Callable[[float], None],
              cancel: threading.Event | None, device="cpu") -> sitk.Image:
        if liver_mask is None:
            raise ValueError("the KU Leuven lesion stage needs a liver mask")
        predict = _predictor(module, cancel, device)

        def run(image: sitk.Image, liver: sitk.Image | None) -> sitk.Image:
            return pipeline.segment_lesions(image, liver, predict,
                                            progress=lambda done, total: progress(done / max(total, 1))).mask

        mask = _on_aligned_grid(run, ct, liver_mask)
        progress(1.0)
        return mask

    return stage


STAGES = {"kuleuven_liver": liver_stage, "kuleuven_lesion": lesion_stage}


def stage_for(pipeline_name: str, module) -> Stage:
    """The stage function of a manifest ``pipeline`` name with its loaded network."""
    try:
        return STAGES[pipeline_name](module)
    except KeyError:
        raise ValueError(f"unknown pipeline {pipeline_name!r}; known: {', '.join(STAGES)}") from None
