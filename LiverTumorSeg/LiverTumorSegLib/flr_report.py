"""FLR figures for reports: rows for a measurements CSV or table, and a preview PNG of the planned resection.

Compute core (SimpleITK, Pillow through ``preview``; no Slicer, no torch). The figures are the dict of
``flr.FLRFigures.to_dict()`` (volumes in mL, ratios in 0..1). Rows show them as a reader expects them:
volumes in mL with one decimal, ratios as percentages with one decimal, BSA in m^2 with three decimals;
a figure that could not be computed (e.g. sFLR without height and weight) reads ``n/a``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .flr import FIGURE_KEYS
from .hu_windows import HUWindow, get_preset
from .preview import default_center_mm, mask_color, write_previews
from .segment_terminology import load_segment_definitions

NOT_AVAILABLE = "n/a"

# key of FLRFigures.to_dict() -> (row name, unit, format); "percent" shows a 0..1 ratio as %.
FIGURE_ROWS: Mapping[str, tuple[str, str, str]] = {
    "total_liver_ml": ("Total liver volume", "mL", "volume"),
    "tumor_ml": ("Tumor volume", "mL", "volume"),
    "functional_liver_ml": ("Functional liver volume", "mL", "volume"),
    "resected_ml": ("Resected liver volume", "mL", "volume"),
    "flr_ml": ("Future liver remnant (FLR)", "mL", "volume"),
    "flr_ratio": ("FLR ratio (FLR / functional liver volume)", "%", "percent"),
    "bsa_m2": ("Body surface area (Mosteller)", "m^2", "bsa"),
    "telv_ml": ("Total estimated liver volume (Vauthey)", "mL", "volume"),
    "sflr": ("Standardized FLR (FLR / TELV)", "%", "percent"),
    "min_sflr": ("Minimum safe FLR for the liver condition", "%", "percent"),
    "verdict": ("Verdict", "", "text"),
    "verdict_basis": ("Verdict based on", "", "basis"),
    "condition": ("Liver condition", "", "text"),
    "disconnected_remnant_count": ("Remnant pieces cut off the main remnant", "", "count"),
    "disconnected_remnant_ml": ("Volume of the cut-off remnant pieces", "mL", "volume"),
    "disconnected_dropped": ("Cut-off pieces counted as resected", "", "yes_no"),
}
_BASIS_NAMES = {"sflr": "sFLR", "flr_ratio": "FLR ratio"}

# Preview mask names (as the legend shows them) -> segment definition id of segment_terminology.json.
PREVIEW_REMNANT = "Future liver remnant"
PREVIEW_RESECTION = "Resection"
PREVIEW_TUMOR = "Liver tumor"
_PREVIEW_DEFINITIONS = {PREVIEW_REMNANT: "flr_remnant", PREVIEW_RESECTION: "flr_resection"}


def format_figure(key: str, value: Any) -> str:
    """One figure as text (see the module docstring); ``KeyError`` for a key without a row."""
    kind = FIGURE_ROWS[key][2]
    if value is None:
        return NOT_AVAILABLE
    if kind == "volume":
        return f"{float(value):.1f}"
    if kind == "percent":
        return f"{100.0 * float(value):.1f}"
    if kind == "bsa":
        return f"{float(value):.3f}"
    if kind == "count":
        return str(int(value))
    if kind == "yes_no":
        return "yes" if value else "no"
    if kind == "basis":
        return _BASIS_NAMES.get(str(value), str(value))
    return str(value)


def flr_table_rows(figures: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(key, name, value, unit)`` per figure, in the order of ``FIGURE_ROWS``.

    The keys of ``flr.FIGURE_KEYS`` are required (``ValueError`` names the missing ones); the extra keys
    (verdict basis, condition, cut-off pieces) are shown when present.
    """
    missing = [key for key in FIGURE_KEYS if key not in figures]
    if missing:
        raise ValueError(f"FLR figures lack {missing}; expected the dict of FLRFigures.to_dict()")
    return [
        (key, name, format_figure(key, figures[key]), unit)
        for key, (name, unit, _) in FIGURE_ROWS.items()
        if key in figures
    ]


def flr_rows(figures: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(name, value, unit)`` rows for the measurements CSV, e.g.
    ``("Future liver remnant (FLR)", "612.4", "mL")`` or ``("Standardized FLR (FLR / TELV)", "n/a", "%")``."""
    return [(name, value, unit) for _, name, value, unit in flr_table_rows(figures)]


def flr_preview_colors() -> dict[str, tuple[int, int, int]]:
    """Legend colours: remnant and resection as their segments (segment_terminology.json), tumor as in
    the other previews."""
    definitions = load_segment_definitions()
    colors = {name: definitions[key].color_rgb255 for name, key in _PREVIEW_DEFINITIONS.items()}
    colors[PREVIEW_TUMOR] = mask_color(PREVIEW_TUMOR)
    return colors


def write_flr_preview(
    ct: sitk.Image,
    remnant: sitk.Image,
    resected: sitk.Image,
    tumor: sitk.Image | None,
    out_dir: str | Path,
    window: HUWindow | str = "abdomen",
    *,
    prefix: str = "flr_",
    center_mm: tuple[float, float, float] | None = None,
    fill_alpha: float = 0.35,
) -> dict[str, Path]:
    """Axial, coronal and sagittal PNGs of ``ct`` with the remnant, the resection and the tumors.

    ``remnant``, ``resected`` and ``tumor`` are binary masks (non-zero = inside, e.g. those of
    ``flr.ResectionResult``) in the CT's physical space; ``tumor`` may be None. ``window`` is an
    ``HUWindow`` or a preset id of ``hu_window_presets.json``. The planes pass through ``center_mm`` (LPS,
    mm), by default the centroid of the whole liver (remnant + resection), so both parts show. Masks are
    filled translucently (``fill_alpha``) and outlined. Returns ``{plane: path}`` of
    ``out_dir/<prefix><plane>.png``.
    """
    if isinstance(window, str):
        window = get_preset(window)
    masks = {PREVIEW_REMNANT: remnant, PREVIEW_RESECTION: resected}
    if tumor is not None:
        masks[PREVIEW_TUMOR] = tumor
    if center_mm is None:
        center_mm = default_center_mm(ct, {"liver": _union(remnant, resected)})
    return write_previews(
        ct,
        out_dir,
        window=window,
        masks=masks,
        colors=flr_preview_colors(),
        center_mm=center_mm,
        prefix=prefix,
        fill_alpha=fill_alpha,
    )


def _union(first: sitk.Image, second: sitk.Image) -> sitk.Image:
    """Voxelwise union of two masks on one grid (uint8 0/1, geometry of ``first``)."""
    array = (sitk.GetArrayViewFromImage(first) != 0) | (sitk.GetArrayViewFromImage(second) != 0)
    union = sitk.GetImageFromArray(array.astype(np.uint8))
    union.CopyInformation(first)
    return union
