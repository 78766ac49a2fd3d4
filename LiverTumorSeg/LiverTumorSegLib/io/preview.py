"""HU-window preview PNGs: axial, coronal and sagittal planes of a CT with mask contours.

Each plane is resampled from the physical geometry (origin, spacing, direction) onto a display grid with
square pixels, so that oblique, flipped or anisotropic inputs show in the radiological convention with
their true aspect ratio (a 5 mm slice is five 1 mm pixels high, not one):

- axial: patient right on the image left, anterior at the top (seen from the feet);
- coronal: patient right on the image left, superior at the top (seen from the front);
- sagittal: anterior on the image left, superior at the top (seen from the patient's left).

Physical points are LPS (DICOM / ITK): +x patient left, +y posterior, +z superior, in mm.
The CT is interpolated linearly, masks with nearest neighbour; a mask is drawn as a 1-2 px contour
(the mask minus its 2D erosion) in its colour, optionally over a translucent fill. A small legend names
the plane, the window (W/L in HU) and the masks. Compute core: numpy, scipy, SimpleITK, Pillow only.
The same function makes the "what the model sees" preview when given the model-input window
(``hu_windows.model_input_window``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from LiverTumorSegLib.core.hu_windows import HUWindow, get_preset
from LiverTumorSegLib.core.terminology import load_segment_definitions
from LiverTumorSegLib.io.atomic import atomic_write

# Display grid size limits (pixels along the longest side of the volume's bounding box).
MIN_DISPLAY_PIXELS = 256
MAX_DISPLAY_PIXELS = 1024

DEFAULT_COLORS: dict[str, tuple[int, int, int]] = {
    "liver": (221, 130, 101),  # 3D Slicer General Anatomy "Liver" (docs/definitions.md)
    "liver tumor": (70, 230, 70),  # clearly distinct from the liver's salmon
}
_FALLBACK_COLORS = [(80, 160, 255), (255, 80, 200), (255, 230, 0), (0, 230, 230)]
_COLOR_ALIASES = {"tumor": "liver tumor", "tumour": "liver tumor", "liver tumour": "liver tumor"}


class PreviewWarning(UserWarning):
    """A preview was written but may not show what was asked (e.g. centre outside the image)."""


@dataclass(frozen=True)
class DisplayPlane:
    """Display axes of one plane as LPS unit vectors, and the patient side at each image edge."""

    column_lps: tuple[float, float, float]  # direction of increasing image column (to the right)
    row_lps: tuple[float, float, float]  # direction of increasing image row (downwards)
    edge_labels: tuple[str, str, str, str]  # left, right, top, bottom


PLANES: dict[str, DisplayPlane] = {
    "axial": DisplayPlane((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), ("R", "L", "A", "P")),
    "coronal": DisplayPlane((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), ("R", "L", "S", "I")),
    "sagittal": DisplayPlane((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), ("A", "P", "S", "I")),
}


def check_volume(image: sitk.Image, what: str) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{what} must be a 3D scalar image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per pixel"
        )


def _corners_lps(image: sitk.Image) -> np.ndarray:
    """The 8 corners of the image's voxel-edge bounding box as LPS points, shape (8, 3) in mm."""
    size = np.array(image.GetSize(), dtype=float)
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    grid = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in size], indexing="ij")).reshape(3, -1)
    offsets = direction @ (np.array(image.GetSpacing(), dtype=float)[:, None] * grid)
    return (np.array(image.GetOrigin(), dtype=float)[:, None] + offsets).T


def display_pixel_mm(image: sitk.Image) -> float:
    """Square display pixel size (mm): the finest voxel spacing, kept so that the longest side of the
    image's LPS bounding box spans MIN_DISPLAY_PIXELS..MAX_DISPLAY_PIXELS pixels."""
    corners = _corners_lps(image)
    extent_mm = float(np.max(corners.max(axis=0) - corners.min(axis=0)))
    pixel_mm = min(image.GetSpacing())
    return float(np.clip(pixel_mm, extent_mm / MAX_DISPLAY_PIXELS, extent_mm / MIN_DISPLAY_PIXELS))


def display_grid(image: sitk.Image, plane: str, center_mm: Sequence[float], pixel_mm: float) -> sitk.Image:
    """A one-slice 3D reference image (size (columns, rows, 1)) for ``plane`` through the LPS point
    ``center_mm``, covering the image's bounding box, with square ``pixel_mm`` pixels."""
    if plane not in PLANES:
        raise ValueError(f"Unknown preview plane {plane!r}; known: {', '.join(PLANES)}")
    spec = PLANES[plane]
    column, row = np.array(spec.column_lps), np.array(spec.row_lps)
    center = np.asarray(center_mm, dtype=float)
    relative = _corners_lps(image) - center
    start_mm = []
    size = []
    for axis in (column, row):
        lo, hi = float((relative @ axis).min()), float((relative @ axis).max())
        count = max(1, int(np.ceil((hi - lo) / pixel_mm - 1e-6)))
        size.append(count)
        start_mm.append((lo + hi) / 2.0 - (count - 1) / 2.0 * pixel_mm)
    grid = sitk.Image(size[0], size[1], 1, sitk.sitkUInt8)
    grid.SetSpacing((pixel_mm, pixel_mm, pixel_mm))
    grid.SetOrigin(tuple(center + start_mm[0] * column + start_mm[1] * row))
    grid.SetDirection(tuple(np.column_stack([column, row, np.cross(column, row)]).ravel()))
    return grid


def _binary(mask: sitk.Image) -> sitk.Image:
    return sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)


def _resample_plane(
    image: sitk.Image, grid: sitk.Image, interpolator: int, default: float, pixel_type: int
) -> np.ndarray:
    """``image`` sampled on ``grid``; returns the (rows, columns) array."""
    resampled = sitk.Resample(image, grid, sitk.Transform(), interpolator, default, pixel_type)
    return sitk.GetArrayFromImage(resampled)[0]


def mask_color(
    name: str, colors: Mapping[str, tuple[int, int, int]] | None = None, index: int = 0
) -> tuple[int, int, int]:
    """Colour of a mask: ``colors[name]``, else the default for liver / liver tumor, else a palette."""
    if colors and name in colors:
        return tuple(int(c) for c in colors[name])
    key = name.strip().lower().replace("_", " ")
    key = _COLOR_ALIASES.get(key, key)
    return DEFAULT_COLORS.get(key, _FALLBACK_COLORS[index % len(_FALLBACK_COLORS)])


def render_plane(
    ct: sitk.Image,
    plane: str,
    *,
    window: HUWindow,
    masks: Mapping[str, sitk.Image] | None = None,
    colors: Mapping[str, tuple[int, int, int]] | None = None,
    center_mm: Sequence[float] | None = None,
    pixel_mm: float | None = None,
    fill_alpha: float = 0.0,
) -> tuple[np.ndarray, list[str]]:
    """One windowed plane with mask overlays, without text.

    Returns ``(rgb, shown)``: ``rgb`` is uint8 of shape (rows, columns, 3) in the display convention
    of the module docstring; ``shown`` lists the masks that have pixels in this plane.
    """
    if not 0.0 <= fill_alpha <= 1.0:
        raise ValueError(f"fill_alpha must be within [0, 1], got {fill_alpha}")
    masks = dict(masks or {})
    center = default_center_mm(ct, masks) if center_mm is None else center_mm
    grid = display_grid(ct, plane, center, pixel_mm or display_pixel_mm(ct))
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(ct)
    hu = _resample_plane(ct, grid, sitk.sitkLinear, stats.GetMinimum(), sitk.sitkFloat32)
    gray = np.rint(window.apply(hu) * 255.0).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    planes = {
        name: _resample_plane(_binary(mask), grid, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8) > 0
        for name, mask in masks.items()
    }
    palette = {name: np.array(mask_color(name, colors, i), dtype=np.float32) for i, name in enumerate(planes)}
    if fill_alpha > 0:
        for name, inside in planes.items():
            blended = (1.0 - fill_alpha) * rgb[inside] + fill_alpha * palette[name]
            rgb[inside] = np.rint(blended).astype(np.uint8)
    thickness = 1 if max(gray.shape) < 600 else 2
    cross = ndimage.generate_binary_structure(2, 1)
    for name, inside in planes.items():
        boundary = inside & ~ndimage.binary_erosion(inside, structure=cross, iterations=thickness)
        rgb[boundary] = palette[name].astype(np.uint8)
    return rgb, [name for name, inside in planes.items() if inside.any()]


def default_center_mm(ct: sitk.Image, masks: Mapping[str, sitk.Image] | None = None) -> tuple[float, ...]:
    """LPS centroid (mm) of the first non-empty mask, else the centre of the CT's voxel grid."""
    for mask in (masks or {}).values():
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(_binary(mask))
        if stats.HasLabel(1):
            return tuple(float(c) for c in stats.GetCentroid(1))
    middle = [(n - 1) / 2.0 for n in ct.GetSize()]
    return tuple(float(c) for c in ct.TransformContinuousIndexToPhysicalPoint(middle))


def _font(size_px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size_px)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def annotate(
    rgb: np.ndarray,
    lines: Sequence[str],
    legend: Sequence[tuple[str, tuple[int, int, int]]],
    edge_labels: Sequence[str],
) -> Image.Image:
    """Draw title ``lines``, a colour ``legend`` and the patient-side letters (left, right, top,
    bottom) on a (rows, columns, 3) uint8 image, over translucent dark boxes; returns an RGB image."""
    base = Image.fromarray(rgb, "RGB").convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    font_px = max(10, min(base.size) // 26)
    font, pad = _font(font_px), max(2, font_px // 4)
    entries = [(line, None) for line in lines] + [(name, color) for name, color in legend]
    swatch = font_px if legend else 0
    width = max(draw.textlength(text, font=font) + (swatch + pad if color else 0) for text, color in entries)
    step = font_px + pad
    box_right = width + 2 * pad
    draw.rectangle((0, 0, box_right, len(entries) * step + pad), fill=(0, 0, 0, 150))
    for i, (text, color) in enumerate(entries):
        x, y = pad, pad + i * step
        if color is not None:
            draw.rectangle((x, y + 1, x + swatch - 2, y + font_px - 1), fill=(*color, 255))
            x += swatch + pad
        draw.text((x, y), text, font=font, fill=(255, 255, 255, 255))
    w, h = base.size
    top_x = max(w / 2, box_right + pad + font_px)  # the top letter moves right of a wide legend box
    anchors = [((pad, h / 2), "lm"), ((w - pad, h / 2), "rm"), ((top_x, pad), "mt"), ((w / 2, h - pad), "mb")]
    for letter, (xy, anchor) in zip(edge_labels, anchors, strict=True):
        draw.text(
            xy,
            letter,
            font=font,
            anchor=anchor,
            fill=(255, 255, 0, 255),
            stroke_width=1,
            stroke_fill=(0, 0, 0, 255),
        )
    return Image.alpha_composite(base, overlay).convert("RGB")


def _warn_if_outside(ct: sitk.Image, center_mm: Sequence[float]) -> None:
    index = ct.TransformPhysicalPointToContinuousIndex([float(c) for c in center_mm])
    if any(not -0.5 <= i <= n - 0.5 for i, n in zip(index, ct.GetSize(), strict=True)):
        warnings.warn(
            f"Preview centre {tuple(center_mm)} mm (LPS) lies outside the CT; planes may be empty",
            PreviewWarning,
            stacklevel=3,
        )


def write_previews(
    ct: sitk.Image,
    out_dir: str | Path,
    *,
    window: HUWindow,
    masks: Mapping[str, sitk.Image] | None = None,
    colors: Mapping[str, tuple[int, int, int]] | None = None,
    center_mm: Sequence[float] | None = None,
    prefix: str = "",
    planes: Sequence[str] = ("axial", "coronal", "sagittal"),
    fill_alpha: float = 0.0,
    pixel_mm: float | None = None,
    annotate_text: bool = True,
    overwrite: bool = True,
) -> dict[str, Path]:
    """Write one PNG per plane through the LPS point ``center_mm`` (mm) as ``out_dir/<prefix><plane>.png``
    (each written completely or not at all; an existing one is replaced only with ``overwrite``).

    ``ct`` is a 3D HU image; ``masks`` maps a display name (e.g. "Liver", "Liver tumor") to a binary
    (non-zero = inside) image anywhere in the same physical space; ``colors`` overrides their RGB
    colours. ``center_mm`` defaults to the centroid of the first non-empty mask, else the image centre.
    ``pixel_mm`` defaults to ``display_pixel_mm(ct)``. Returns ``{plane: path}``.
    """
    check_volume(ct, "CT")
    for name, mask in (masks or {}).items():
        check_volume(mask, f"mask {name!r}")
    unknown = [plane for plane in planes if plane not in PLANES]
    if unknown:
        raise ValueError(f"Unknown preview plane(s) {unknown}; known: {', '.join(PLANES)}")
    center = default_center_mm(ct, masks) if center_mm is None else tuple(float(c) for c in center_mm)
    _warn_if_outside(ct, center)
    pixel_mm = pixel_mm or display_pixel_mm(ct)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for plane in planes:
        rgb, shown = render_plane(
            ct,
            plane,
            window=window,
            masks=masks,
            colors=colors,
            center_mm=center,
            pixel_mm=pixel_mm,
            fill_alpha=fill_alpha,
        )
        if annotate_text:
            names = list(masks or {})
            legend = [(name, mask_color(name, colors, names.index(name))) for name in shown]
            lines = [
                f"{plane.capitalize()} - {window.label}",
                f"W {window.width_hu:g} / L {window.level_hu:g} HU",
            ]
            image = annotate(rgb, lines, legend, PLANES[plane].edge_labels)
        else:
            image = Image.fromarray(rgb, "RGB")
        paths[plane] = out_dir / f"{prefix}{plane}.png"
        atomic_write(paths[plane], lambda temporary, image=image: image.save(temporary, format="PNG"),
                     overwrite=overwrite)
    return paths


# --------------------------------------------------------------------------- command line


def _read_image(path: Path, what: str) -> sitk.Image:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ValueError(f"Cannot read {what} {path}: {str(error).strip().splitlines()[-1]}") from error
    check_volume(image, f"{what} {path}")
    return image


def label_masks(labels: sitk.Image) -> dict[str, sitk.Image]:
    """Masks from a label map with 1 = liver parenchyma, 2 = liver tumor: "Liver" is labels 1 and 2
    (the whole liver outline, tumors included), "Liver tumor" is label 2."""
    return {"Liver": sitk.Or(labels == 1, labels == 2), "Liver tumor": sitk.Cast(labels == 2, sitk.sitkUInt8)}


# Preview mask names (as the legend shows them) -> segment definition id of segment_terminology.json.
PREVIEW_REMNANT = "Future liver remnant"


PREVIEW_RESECTION = "Resection"


PREVIEW_TUMOR = "Liver tumor"


_PREVIEW_DEFINITIONS = {PREVIEW_REMNANT: "flr_remnant", PREVIEW_RESECTION: "flr_resection"}


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
