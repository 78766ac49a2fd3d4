"""Synthetic abdominal CT phantom with a liver, its vessel trees and tumors, plus the truth labelmap.

``make_phantom(seed)`` draws one adult patient in the portal venous phase (body wall, spine, ribs, lung
bases, heart, aorta, IVC, kidneys, spleen, stomach, gallbladder, bowel; liver of 1200-1800 mL with portal
and hepatic vein trees; 0..N hypodense or rim-enhancing tumors) and rasterizes it on an axial LPS grid:
anatomy is defined in millimetres (``phantom_anatomy``), so the matrix size and spacing change the
sampling, not the patient. The same seed gives the same bytes. Partial volume is a small Gaussian blur,
noise is Gaussian (10-15 HU), slightly correlated in-plane. Truth: 0 background, 1 liver (parenchyma and
intrahepatic vessels), 2 tumor (always inside the liver). ``write_phantom`` writes a DICOM CT series, the
truth as a compressed NRRD and a JSON description; ``livertumor phantom`` does both from the command line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorSegLib.io.atomic import write_image, write_text
from LiverTumorSegLib.synthetic.anatomy import (
    Anatomy,
    Ellipsoid,
    FourierField,
    draw_anatomy,
    ellipsoid,
    liver_z_range_mm,
)

SLICE_THICKNESSES_MM = (2.5, 3.0, 4.0, 5.0)
FIELD_OF_VIEW_MM = (360.0, 460.0)  # in-plane, drawn; 512 x 512 gives 0.70-0.90 mm pixels
MAX_TUMOR_DIAMETER_MM = 60.0
LABELS = {0: "background", 1: "liver", 2: "liver tumor"}
MAJOR_VESSEL_GENERATION = 2  # portal / hepatic branches up to this generation count as "vessel contact"


@dataclass(frozen=True)
class TumorTruth:
    id: int
    center_mm: tuple[float, float, float]  # LPS physical (x, y, z), design centre
    diameter_mm: float  # longest design diameter (2 x largest semi-axis)
    kind: str  # "hypodense" | "rim"
    touches_vessel: bool  # 26-adjacent to the IVC or a portal / hepatic vein branch of generation <= 2
    touches_surface: bool  # a tumor voxel is 26-adjacent to a non-liver voxel
    volume_ml: float  # measured from the labelmap


@dataclass(frozen=True)
class Phantom:
    ct: sitk.Image  # int16 HU, LPS, identity direction (axial)
    labels: sitk.Image  # uint8 0/1/2 on the same grid
    tumors: tuple[TumorTruth, ...]
    seed: int
    tissue_hu: dict[str, float] = field(default_factory=dict, compare=False)  # design HU before blur/noise

    def _count_ml(self, *values: int) -> float:
        array = sitk.GetArrayViewFromImage(self.labels)
        return float(np.isin(array, values).sum()) * float(np.prod(self.labels.GetSpacing())) / 1000.0

    def liver_volume_ml(self) -> float:
        """Total liver volume: labels 1 and 2 (tumors included), mL."""
        return self._count_ml(1, 2)

    def tumor_volume_ml(self) -> float:
        return self._count_ml(2)


@dataclass(frozen=True)
class _Grid:
    """Axial grid: physical origin and spacing (x, y, z), and the shift from anatomical to physical mm."""

    origin_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    size: tuple[int, int, int]  # (x, y, z)
    shift_mm: np.ndarray  # physical = anatomical + shift

    def _axis(self, i: int) -> np.ndarray:
        return self.origin_mm[i] - self.shift_mm[i] + np.arange(self.size[i]) * self.spacing_mm[i]

    @property
    def x(self) -> np.ndarray:  # voxel centres, anatomical mm
        return self._axis(0)

    @property
    def y(self) -> np.ndarray:
        return self._axis(1)

    @property
    def z(self) -> np.ndarray:
        return self._axis(2)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.size[::-1]

    def crop(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Index box (z, y, x) of the voxels within [lo, hi] (x, y, z mm) plus one voxel; None if empty."""
        slices = []
        for axis, low, high in zip((self.z, self.y, self.x), lo[::-1], hi[::-1], strict=True):
            start = max(int(np.searchsorted(axis, low)) - 1, 0)
            stop = min(int(np.searchsorted(axis, high, side="right")) + 1, len(axis))
            if stop <= start:
                return None
            slices.append(slice(start, stop))
        return tuple(slices)

    def axes(self, crop=(slice(None),) * 3):
        """Broadcastable float32 voxel-centre axes (z, y, x) of ``crop``, anatomical mm."""
        z, y, x = (a[c].astype(np.float32) for a, c in zip((self.z, self.y, self.x), crop, strict=True))
        return z[:, None, None], y[None, :, None], x[None, None, :]


def _make_grid(rng, anatomy: Anatomy, size_xy, spacing_xy_mm, slice_thickness_mm, n_slices) -> _Grid:
    """Axial grid: the field of view is centred on the table axis and covers the liver plus margins."""
    fov_mm, thickness = round(rng.uniform(*FIELD_OF_VIEW_MM)), float(rng.choice(SLICE_THICKNESSES_MM))
    top_margin, coverage = rng.uniform(25.0, 40.0), rng.uniform(210.0, 245.0)
    shift = np.array([rng.uniform(-10, 10), rng.uniform(-10, 10), rng.uniform(-60, 60)]).round(1)
    spacing = float(spacing_xy_mm) if spacing_xy_mm else round(fov_mm / size_xy, 6)
    thickness = float(slice_thickness_mm) if slice_thickness_mm else thickness
    liver_bottom, liver_top = liver_z_range_mm(anatomy)
    if n_slices is None:
        top = liver_top + top_margin
        n_slices = int(round((top - min(top - coverage, liver_bottom - 10.0)) / thickness)) + 1
        bottom = top - (n_slices - 1) * thickness
    else:
        bottom = 0.5 * (liver_bottom + liver_top) - 0.5 * (n_slices - 1) * thickness
    corner = -(size_xy - 1) / 2 * spacing
    origin = tuple(round(float(v), 3) for v in (corner, corner, bottom + shift[2]))
    return _Grid(origin, (spacing, spacing, thickness), (size_xy, size_xy, n_slices), shift)


def _paint_body(hu: np.ndarray, grid: _Grid, anatomy: Anatomy) -> np.ndarray:
    """Skin, fat, muscle wall, abdominal contents (fat, bowel, gas), diaphragm, lung bases; returns depth."""
    body, h, (z, y, x) = anatomy.body, anatomy.hu, grid.axes()
    depth = body.depth(z, y, x).astype(np.float32)
    fat = body.fat_thickness(y, x)
    hu[depth >= 0] = h["skin"]
    hu[depth >= 2] = h["fat"]
    hu[depth >= fat] = h["muscle"]
    cavity = depth >= fat + body.muscle_mm
    z_dia = anatomy.diaphragm.z(y, x)
    bowel, gas = anatomy.textures["bowel"](z, y, x), anatomy.textures["gas"](z, y, x)
    contents = np.where(bowel > 0.3, h["bowel"], h["fat"] + 6.0 * bowel).astype(np.float32)
    contents[(bowel > 0.3) & (gas > 1.4)] = h["air"] + 50.0
    contents[(bowel > 0.3) & ((y > anatomy.spine.body_y_mm - 25.0) | (z > z_dia - 12.0))] = h["fat"]
    np.copyto(hu, contents, where=cavity & (z < z_dia))
    lung = h["lung"] + 15.0 * anatomy.textures["lung"](z, y, x)
    np.copyto(hu, lung, where=cavity & (z >= z_dia + 4.0))
    return depth


def _paint_spine(hu: np.ndarray, occupied: np.ndarray, grid: _Grid, anatomy: Anatomy) -> None:
    """Paraspinal and psoas muscles, vertebral bodies (cortex, cancellous bone, discs), canal, arches."""
    s, h, body = anatomy.spine, anatomy.hu, anatomy.body
    (ax, ay), canal_y = s.body_semi_mm, s.canal_y_mm
    crop = grid.crop([-80, s.body_y_mm - ay - 25, -1e4], [80, body.back_y_mm, 1e4])
    z, y, x = grid.axes(crop)
    region, level = hu[crop], s.level(z)
    disc, arch_level = level < s.disc_mm, (level > s.disc_mm + 2) & (level < s.period_mm - 4)
    back = body.back_y_mm - 0.65 * body.fat_mm - 3.0
    psoas_r = np.clip(0.2 * (-110.0 - z), 0.0, 22.0)
    muscle = anatomy.paraspinal_sdf(z, y, x) < 0
    muscle = muscle | (np.hypot(np.abs(x) - ax - 0.8 * psoas_r, y - s.body_y_mm) < psoas_r)
    region[muscle] = h["muscle"]
    rho = np.sqrt((x / ax) ** 2 + ((y - s.body_y_mm) / ay) ** 2)
    vertebral = rho < 1.0
    np.copyto(
        region,
        np.where(disc, h["disc"], np.where(rho > 1 - 2.5 / ax, h["cortical"], h["cancellous"])),
        where=vertebral,
    )
    canal = np.hypot(x, y - canal_y)
    bone = arch_level & (
        ((canal >= 9) & (canal < 15) & (y > canal_y - 4))
        | (((x / 4.5) ** 2 + ((y - canal_y - 24) / 12) ** 2 < 1) & (y < back))
    )
    bone |= (
        arch_level
        & (level > s.disc_mm + 10)
        & (level < s.disc_mm + 16)
        & (np.abs(x) > 12)
        & (np.abs(x) < ax + 22)
        & (np.abs(y - canal_y + 2 - 0.3 * (np.abs(x) - 12)) < 3)
    )
    region[bone] = 0.8 * h["cortical"]
    region[np.broadcast_to(canal < 9, region.shape)] = h["csf"]
    occupied[crop] |= vertebral | bone | (canal < 9) | muscle


def _paint_ribs(
    hu: np.ndarray, occupied: np.ndarray, depth: np.ndarray, grid: _Grid, anatomy: Anatomy
) -> None:
    """Ribs 7-12 (marrow, cortex, costal cartilage) in the chest wall, descending anteriorly."""
    body, h = anatomy.body, anatomy.hu
    z_lo = min(rib.z_start_mm - rib.drop_mm for rib in anatomy.ribs) - 8.0
    z_hi = max(rib.z_start_mm for rib in anatomy.ribs) + 8.0
    crop = grid.crop([-1e4, -1e4, z_lo], [1e4, 1e4, z_hi])
    if crop is None:
        return
    z, y, x = grid.axes(crop)
    centre = (body.fat_thickness(y, x) + 0.5 * body.muscle_mm)[0]
    kz, ky, kx = np.nonzero(np.abs(depth[crop] - centre) < 5.0)
    pz, py, px, radial = z[kz, 0, 0], y[0, ky, 0], x[0, 0, kx], depth[crop][kz, ky, kx] - centre[ky, kx]
    region, taken = hu[crop], occupied[crop]
    for side in (-1, 1):
        ribs = [rib for rib in anatomy.ribs if rib.side == side]
        angle = ribs[0].angle_deg(py, px)
        for rib in ribs:
            fraction, centre_z = rib.course(angle)
            ellipse = ((pz - centre_z) / 5.5) ** 2 + (radial / 3.5) ** 2
            inside = ellipse < 1.0  # NaN (off the rib's course) compares False
            value = np.where(
                fraction > rib.cartilage_from,
                h["cartilage"],
                np.where(ellipse > 0.35, 0.85 * h["cortical"], 0.7 * h["cancellous"]),
            )
            region[kz[inside], ky[inside], kx[inside]] = value[inside]
            taken[kz[inside], ky[inside], kx[inside]] = True


def _paint_organs(
    hu: np.ndarray, occupied: np.ndarray, vessel: np.ndarray, grid: _Grid, anatomy: Anatomy
) -> None:
    for structure in anatomy.structures():
        crop = grid.crop(*structure.bbox_mm)
        if crop is None:
            continue
        z, y, x = grid.axes(crop)
        sdf = np.broadcast_to(structure.sdf(z, y, x), hu[crop].shape)
        inside = sdf < 0
        np.copyto(hu[crop], structure.shade(sdf, z, y, x), where=inside)
        occupied[crop] |= inside
        if structure.name == "ivc":
            vessel[crop] |= inside


def _inside(sdf, grid: _Grid, crop, step_mm: float = 4.0, lipschitz: float = 4.0) -> np.ndarray:
    """``sdf(z, y, x) < 0`` on ``crop``: sampled every ~``step_mm`` in-plane, exact near the surface.

    A voxel whose nearest coarse sample is farther from the surface than ``lipschitz`` times their distance
    takes that sample's side; the others are evaluated exactly, so the result equals the full evaluation
    for any ``sdf`` whose gradient stays below ``lipschitz``.
    """
    z, y, x = grid.axes(crop)
    f = int(step_mm // grid.spacing_mm[0])
    if f < 2:
        return sdf(z, y, x) < 0
    nearest, reach = [], 0.0
    for n, spacing in ((y.shape[1], grid.spacing_mm[1]), (x.shape[2], grid.spacing_mm[0])):
        samples = np.arange(f // 2, n, f) if n > f // 2 else np.array([n - 1])
        index = np.minimum(np.arange(n) // f, len(samples) - 1)
        nearest.append((samples, index))
        reach += (float(np.abs(np.arange(n) - samples[index]).max()) * spacing) ** 2
    (ys, yi), (xs, xi) = nearest
    coarse = sdf(z, y[:, ys], x[:, :, xs])[:, yi][:, :, xi]
    band = np.abs(coarse) <= lipschitz * np.sqrt(reach) + 0.5
    inside = coarse < 0
    kz, ky, kx = np.nonzero(band)
    inside[kz, ky, kx] = sdf(z[kz, 0, 0], y[0, ky, 0], x[0, 0, kx]) < 0
    return inside


def _paint_liver(hu, labels, occupied, vessel, grid: _Grid, anatomy: Anatomy) -> None:
    """Parenchyma (label 1) where no other organ is, then the vessel trees with partial-volume edges."""
    crop = grid.crop(*anatomy.liver_bbox_mm())
    z, y, x = grid.axes(crop)
    liver = _inside(anatomy.liver_sdf, grid, crop) & ~occupied[crop]
    np.copyto(hu[crop], anatomy.hu["liver"] + 4.0 * anatomy.textures["liver"](z, y, x), where=liver)
    labels[crop][liver] = 1
    voxel_mm = float(np.prod(grid.spacing_mm)) ** (1 / 3)
    for tube in anatomy.vessels:
        lo, hi = tube.bbox_mm()
        box = grid.crop(lo - voxel_mm, hi + voxel_mm)
        if box is None:
            continue
        alpha = np.clip(0.5 - tube.sdf(*grid.axes(box)) / voxel_mm, 0.0, 1.0).astype(np.float32)
        alpha *= (labels[box] == 1) if tube.intrahepatic else ~occupied[box]
        hu[box] += alpha * (anatomy.hu[tube.tree] - hu[box])
        if tube.generation <= MAJOR_VESSEL_GENERATION:
            vessel[box] |= alpha >= 0.5


@dataclass(frozen=True)
class _TumorDesign:
    shape: Ellipsoid
    texture: FourierField
    kind: str
    rim_mm: float
    core_hu: float
    rim_hu: float

    @property
    def radius_mm(self) -> float:  # including the surface irregularity
        return 1.15 * float(self.shape.semi_axes_mm.max())

    def sdf(self, z, y, x):
        return self.shape.sdf(z, y, x) + 0.1 * self.radius_mm * self.texture(z, y, x)


def _candidate_centres(rng, anatomy: Anatomy, placement: str, radius: float) -> np.ndarray:
    """64 random points: next to an intrahepatic vessel ("vessel") or anywhere in the liver box."""
    if placement != "vessel":
        lo, hi = anatomy.liver_bbox_mm()
        return lo + (hi - lo) * rng.uniform(size=(64, 3))
    tubes = [t for t in anatomy.vessels if t.intrahepatic and t.generation <= MAJOR_VESSEL_GENERATION]
    chosen = [tubes[i] for i in rng.integers(0, len(tubes), 64)]
    t, offset = rng.uniform(size=(64, 1)), rng.standard_normal((64, 3))
    axis = np.array([tube.p1 - tube.p0 for tube in chosen])
    offset -= axis * (np.sum(offset * axis, 1) / np.sum(axis * axis, 1))[:, None]
    offset /= np.linalg.norm(offset, axis=1, keepdims=True)
    distance = np.array([tube.r1 for tube in chosen])[:, None] + radius * rng.uniform(0.4, 0.95, (64, 1))
    return np.array([tube.p0 for tube in chosen]) + t * axis + offset * distance


def _find_centre(rng, anatomy: Anatomy, placement: str, radius: float, placed: list[_TumorDesign]):
    """A centre where a tumor of ``radius`` lies deep in, at the surface of, or against a vessel of the liver;
    None if 40 batches of candidates find none."""
    for _ in range(40):
        points = _candidate_centres(rng, anatomy, placement, radius)
        sdf = anatomy.liver_sdf_at(points)
        ok = {
            "deep": sdf < -(radius + 3.0),
            "surface": (sdf > -0.7 * radius) & (sdf < -0.2 * radius),
            "vessel": sdf < -0.5 * radius,
        }[placement]
        for other in placed:
            ok &= np.linalg.norm(points - other.shape.center, axis=1) > radius + other.radius_mm + 3.0
        if ok.any():
            return points[np.argmax(ok)]
    return None


def _design_tumors(rng, anatomy: Anatomy, n_tumors: int, min_diameter_mm: float) -> list[_TumorDesign]:
    """Hypodense or rim-enhancing tumors, ``min_diameter_mm``..50 mm (skewed toward small ones), elongated up
    to 20 % along random axes; a tumor that finds no room after shrinking three times is left out."""
    designs: list[_TumorDesign] = []
    liver_hu = anatomy.hu["liver"]
    for _ in range(n_tumors):
        placement = str(rng.choice(["deep", "surface", "vessel"], p=[0.4, 0.3, 0.3]))
        diameter = min_diameter_mm + (50.0 - min_diameter_mm) * rng.uniform() ** 1.6
        factors = np.exp(rng.uniform(-0.18, 0.18, 3))
        factors = np.clip(factors / np.cbrt(factors.prod()), 0.8, MAX_TUMOR_DIAMETER_MM / 50.0)
        angles, texture = rng.uniform(0, 180, 3), FourierField.draw(rng, 6, (8.0, 25.0))
        rim = diameter >= 15.0 and rng.uniform() < 0.45
        core_hu = rng.uniform(20, 45) if rim else liver_hu - rng.uniform(40, 70)
        for _ in range(4):
            semi = 0.5 * diameter * factors
            centre = _find_centre(rng, anatomy, placement, 1.15 * semi.max(), designs)
            if centre is not None:
                break
            diameter = max(min_diameter_mm, 0.7 * diameter)
        if centre is None:
            continue
        designs.append(
            _TumorDesign(
                ellipsoid(centre, semi, angles),
                texture,
                "rim" if rim else "hypodense",
                rng.uniform(2.0, 4.0),
                core_hu,
                liver_hu + rng.uniform(25, 45),
            )
        )
    return designs


def _paint_tumors(hu, labels, vessel, grid: _Grid, designs: list[_TumorDesign]) -> tuple[TumorTruth, ...]:
    """Label 2 inside the liver; HU from each design; truth measured on the labelmap."""
    voxel_ml, truths = float(np.prod(grid.spacing_mm)) / 1000.0, []
    for design in designs:
        centre, r = design.shape.center, design.radius_mm
        crop = grid.crop(centre - r - 2 * max(grid.spacing_mm), centre + r + 2 * max(grid.spacing_mm))
        z, y, x = grid.axes(crop)
        sdf = np.broadcast_to(design.sdf(z, y, x), hu[crop].shape)
        inside = (sdf < 0) & (labels[crop] > 0)
        if not inside.any():  # between voxel centres: keep the centre voxel if it is liver, else drop it
            nearest = tuple(
                int(np.argmin(np.abs(a.ravel() - c))) for a, c in zip((z, y, x), centre[::-1], strict=True)
            )
            inside[nearest] = labels[crop][nearest] > 0
            if not inside.any():
                continue
        core = design.core_hu - 8.0 * np.clip(-sdf / r, 0, 1) + 5.0 * design.texture(z, y, x)
        value = np.where(sdf > -design.rim_mm, design.rim_hu, core) if design.kind == "rim" else core
        np.copyto(hu[crop], value, where=inside)
        labels[crop][inside] = 2
        ring = ndimage.binary_dilation(inside, np.ones((3, 3, 3), bool)) & ~inside
        truths.append(
            TumorTruth(
                len(truths) + 1,
                tuple(round(float(c), 2) for c in centre + grid.shift_mm),
                round(2.0 * float(design.shape.semi_axes_mm.max()), 2),
                design.kind,
                bool((ring & vessel[crop]).any()),
                bool((ring & (labels[crop] == 0)).any()),
                round(float(inside.sum()) * voxel_ml, 3),
            )
        )
    return tuple(truths)


def _acquire(hu: np.ndarray, grid: _Grid, rng, noise_sd_hu: float) -> np.ndarray:
    """Partial-volume blur, in-plane-correlated Gaussian noise, int16 HU in [-1024, 3071]."""
    sx = grid.spacing_mm[0]
    image = ndimage.gaussian_filter(
        hu, (0.35, max(0.6, 0.45 * sx) / sx, max(0.6, 0.45 * sx) / sx), truncate=3.0
    )
    noise = ndimage.gaussian_filter(
        rng.standard_normal(hu.shape, dtype=np.float32), (0, 0.7, 0.7), truncate=3.0
    )
    image += noise * np.float32(noise_sd_hu / noise.std())
    return np.rint(np.clip(image, -1024, 3071)).astype(np.int16)


def _check_arguments(**values) -> None:
    minimum = {
        "size_xy": 16,
        "spacing_xy_mm": 1e-6,
        "slice_thickness_mm": 1e-6,
        "n_slices": 1,
        "n_tumors": 0,
        "max_tumors": 0,
    }
    bad = [f"{name}={value}" for name, value in values.items() if value is not None and value < minimum[name]]
    if bad:
        raise ValueError(f"make_phantom: invalid {', '.join(bad)}")


def make_phantom(
    seed: int = 0,
    *,
    size_xy: int = 512,
    spacing_xy_mm: float | None = None,
    slice_thickness_mm: float | None = None,
    n_slices: int | None = None,
    n_tumors: int | None = None,
    max_tumors: int = 5,
) -> Phantom:
    """Synthetic portal-venous abdominal CT and its truth labels, reproducible from ``seed``.

    The in-plane field of view (360-460 mm), slice thickness (2.5, 3, 4 or 5 mm) and tumor count
    (0..``max_tumors``) are drawn from the seed unless given; ``size_xy`` changes the pixel size, not
    the field of view. ``n_slices`` defaults to the liver plus 25-40 mm above the dome (210-245 mm in
    all); a given count is centred on the liver. Tumor diameters are drawn from ``max(5 mm, 2 x the
    largest spacing)`` to 50 mm (up to 60 mm along the longest axis).
    """
    _check_arguments(
        size_xy=size_xy,
        spacing_xy_mm=spacing_xy_mm,
        slice_thickness_mm=slice_thickness_mm,
        n_slices=n_slices,
        n_tumors=n_tumors,
        max_tumors=max_tumors,
    )
    geometry_rng, anatomy_rng, tumor_rng, noise_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    anatomy = draw_anatomy(anatomy_rng)
    grid = _make_grid(geometry_rng, anatomy, size_xy, spacing_xy_mm, slice_thickness_mm, n_slices)
    drawn_tumors, noise_sd = int(geometry_rng.integers(0, max_tumors + 1)), geometry_rng.uniform(10.0, 15.0)
    hu = np.full(grid.shape, anatomy.hu["air"], np.float32)
    labels = np.zeros(grid.shape, np.uint8)
    occupied, vessel = np.zeros(grid.shape, bool), np.zeros(grid.shape, bool)
    depth = _paint_body(hu, grid, anatomy)
    _paint_spine(hu, occupied, grid, anatomy)
    _paint_ribs(hu, occupied, depth, grid, anatomy)
    del depth
    _paint_organs(hu, occupied, vessel, grid, anatomy)
    _paint_liver(hu, labels, occupied, vessel, grid, anatomy)
    designs = _design_tumors(
        tumor_rng,
        anatomy,
        drawn_tumors if n_tumors is None else n_tumors,
        max(5.0, 2.0 * max(grid.spacing_mm)),
    )
    tumors = _paint_tumors(hu, labels, vessel, grid, designs)
    ct = sitk.GetImageFromArray(_acquire(hu, grid, noise_rng, noise_sd))
    ct.SetSpacing(grid.spacing_mm)
    ct.SetOrigin(grid.origin_mm)
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(ct)
    return Phantom(ct, label_image, tumors, seed, dict(anatomy.hu))


def phantom_summary(phantom: Phantom) -> dict:
    """Seed, geometry, label names, volumes (mL) and the tumor list, as JSON-ready values."""
    ct = phantom.ct
    return {
        "seed": phantom.seed,
        "size": list(ct.GetSize()),
        "spacing_mm": [round(v, 6) for v in ct.GetSpacing()],
        "origin_mm": [round(v, 4) for v in ct.GetOrigin()],
        "direction": list(ct.GetDirection()),
        "labels": {str(k): v for k, v in LABELS.items()},
        "liver_volume_ml": round(phantom.liver_volume_ml(), 3),
        "tumor_volume_ml": round(phantom.tumor_volume_ml(), 3),
        "tumors": [dataclasses.asdict(tumor) for tumor in phantom.tumors],
    }


def write_phantom(
    phantom: Phantom,
    out_dir: str | Path,
    *,
    series_description: str = "Synthetic abdominal CT phantom, portal venous",
) -> dict[str, Path]:
    """Write ``out_dir``/dicom/IM0000.dcm... (one CT series), ``truth.nrrd`` (labels, compressed) and
    ``phantom.json`` (``phantom_summary`` plus the design HU); returns their paths and ``dir``.

    UIDs are derived from the voxel content, so the same phantom always gets the same UIDs and two
    different phantoms never share one. Slice files of an earlier phantom in ``dicom/`` are replaced.
    """
    from pydicom.uid import generate_uid

    from LiverTumorSegLib.io.dicom_write import write_ct_series

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(sitk.GetArrayViewFromImage(phantom.ct).tobytes())
    digest.update(repr((phantom.ct.GetOrigin(), phantom.ct.GetSpacing())).encode())
    study_uid, series_uid = (
        generate_uid(entropy_srcs=["LiverTumorAnalysis phantom", part, digest.hexdigest()])
        for part in ("study", "series")
    )
    paths = {
        "dir": out_dir,
        "dicom": out_dir / "dicom",
        "truth": out_dir / "truth.nrrd",
        "json": out_dir / "phantom.json",
    }
    for stale in paths["dicom"].glob("IM*.dcm"):
        stale.unlink()
    write_ct_series(
        phantom.ct,
        paths["dicom"],
        patient_id=f"LTA-PHANTOM-{phantom.seed}",
        study_uid=study_uid,
        series_uid=series_uid,
        study_description="LiverTumorAnalysis phantom",
        series_description=series_description,
        extra_tags={
            "BodyPartExamined": "ABDOMEN",
            "ContrastBolusAgent": "IV contrast, portal venous phase (synthetic)",
            "ImageComments": f"LiverTumorAnalysis synthetic CT phantom, seed {phantom.seed}",
        },
    )
    write_image(phantom.labels, paths["truth"], overwrite=True)
    summary = {
        **phantom_summary(phantom),
        "tissue_hu": phantom.tissue_hu,
        "files": {"dicom": "dicom", "truth": "truth.nrrd"},
    }
    write_text(paths["json"], json.dumps(summary, indent=2) + "\n", overwrite=True)
    return paths


PHANTOM_OUTPUTS = ("dicom/IM*.dcm", "truth.nrrd", "phantom.json")  # what write_phantom puts into its folder
