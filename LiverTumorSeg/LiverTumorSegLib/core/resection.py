"""Resection geometry: which liver parenchyma voxels a planned resection removes.

Compute core (numpy, scipy, SimpleITK; no Slicer, no torch). Volumes travel as ``sitk.Image`` masks on the
grid of the liver labelmap; numpy arrays taken from them are indexed (z, y, x).

A resection is the union of any of these definitions:

- a user-painted **resection mask** on the same grid (every non-zero voxel is resected);
- one or more **planes** ``Plane(point_mm, normal)`` in the image's physical coordinates (LPS, mm, as
  SimpleITK reads them; the direction matrix is honoured): a voxel whose centre lies on the side the normal
  points to (signed distance > ``PLANE_TOLERANCE_MM``) is resected, so centres lying on the plane stay;
- a **non-anatomic margin** around every tumor: parenchyma whose centre lies within ``margin_mm`` of the
  centre of any tumor voxel (exact Euclidean distance in mm with the voxel spacing; the direction matrix is
  assumed orthonormal, as in SimpleITK) is resected.

Remnant pieces not connected to the main (largest) remnant piece are reported and, on request, counted as
resected. Connectivity is face connectivity (6 neighbours): two voxels touching only at an edge or a corner
are separate pieces, the conservative choice for a liver that must stay attached to its vessels. When two
pieces tie for the largest, the first in (z, y, x) scan order is the main one.

Tumor voxels are never parenchyma (a voxel in both input masks counts as tumor); every parenchyma voxel ends
up exactly once in either the resected or the remnant mask.

``ResectionGeometry`` precomputes the parenchyma voxel indices (restricted to the liver bounding box) once,
so that moving a plane costs one dot product over the parenchyma voxels, and the tumor distance map is
computed once, on the first margin request.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorSegLib.core.grid import check_same_grid
from LiverTumorSegLib.core.plausibility import check_labelmap

# Centres closer than this to a plane (mm) count as on the plane (not resected), and centres within this of
# the margin count as inside it: ties do not depend on floating-point rounding.
PLANE_TOLERANCE_MM = 1e-6
MARGIN_TOLERANCE_MM = 1e-6
CONNECTIVITY = 6  # face connectivity for remnant pieces
_FACE_STRUCTURE = ndimage.generate_binary_structure(3, 1)


class ResectionWarning(UserWarning):
    """A resection was computed but one of its definitions had nothing to act on (e.g. margin, no tumor)."""


@dataclass(frozen=True)
class Plane:
    """A resection plane: a point and a normal, both in physical LPS coordinates (mm).

    The normal is stored normalised to unit length; voxels on the side it points to are resected.
    """

    point_mm: tuple[float, float, float]
    normal: tuple[float, float, float]

    def __post_init__(self) -> None:
        point = _three_finite(self.point_mm, "plane point")
        normal = _three_finite(self.normal, "plane normal")
        length = math.sqrt(sum(c * c for c in normal))
        if length < 1e-12:
            raise ValueError(f"plane normal must be a non-zero vector, got {normal}")
        object.__setattr__(self, "point_mm", point)
        object.__setattr__(self, "normal", tuple(c / length for c in normal))

    @classmethod
    def parse(cls, text: str) -> Plane:
        """A plane from ``"x,y,z,nx,ny,nz"`` (LPS, mm; the normal need not be unit length)."""
        try:
            values = [float(part) for part in text.split(",")]
        except ValueError as error:
            raise ValueError(f"plane {text!r}: expected six numbers x,y,z,nx,ny,nz") from error
        if len(values) != 6:
            raise ValueError(f"plane {text!r}: expected six numbers x,y,z,nx,ny,nz, got {len(values)}")
        return cls(tuple(values[:3]), tuple(values[3:]))

    def signed_distance_mm(self, points_mm: np.ndarray) -> np.ndarray:
        """Signed distances (mm) of LPS points, shape (N, 3) -> (N,); positive on the normal's side."""
        return (np.asarray(points_mm, dtype=float) - np.asarray(self.point_mm)) @ np.asarray(self.normal)


def _three_finite(values: Sequence[float], what: str) -> tuple[float, float, float]:
    result = tuple(float(v) for v in values)
    if len(result) != 3 or not all(math.isfinite(v) for v in result):
        raise ValueError(f"{what} must be three finite numbers, got {tuple(values)}")
    return result  # type: ignore[return-value]


def _mask_array(image: sitk.Image, what: str) -> np.ndarray:
    """Non-zero voxels of a 3D scalar image as a bool array (z, y, x)."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{what} must be a 3D scalar image, got {image.GetDimension()}D")
    return sitk.GetArrayViewFromImage(image) != 0


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """Smallest (z, y, x) slices holding every True voxel of a non-empty mask."""
    bounds = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        bounds.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(bounds)  # type: ignore[return-value]


@dataclass(frozen=True)
class RemnantSplit:
    """The remnant after a resection, split into its main piece and the disconnected pieces.

    ``remnant`` and ``resected`` are bool flags over the parenchyma voxels (order of
    ``ResectionGeometry``); ``disconnected_counts`` holds the voxel count of each piece not connected to
    the main piece (largest first), whether or not they were dropped.
    """

    resected: np.ndarray
    remnant: np.ndarray
    disconnected_counts: tuple[int, ...]
    dropped_disconnected: bool


class ResectionGeometry:
    """Parenchyma and tumor voxels of one liver, precomputed for fast repeated resections.

    ``parenchyma`` and ``tumor`` are masks (non-zero = inside) on the same grid; voxels in both count as
    tumor. Per-voxel arrays (flags) follow the C order of the parenchyma voxels in the (z, y, x) array.
    """

    def __init__(self, parenchyma: sitk.Image, tumor: sitk.Image | None = None) -> None:
        parenchyma_array = _mask_array(parenchyma, "liver parenchyma mask")
        tumor_array = np.zeros_like(parenchyma_array)
        if tumor is not None:
            check_same_grid(tumor, parenchyma, "tumor mask", "the liver parenchyma mask")
            tumor_array = _mask_array(tumor, "tumor mask")
        parenchyma_array = parenchyma_array & ~tumor_array
        if not parenchyma_array.any():
            raise ValueError("no liver parenchyma: the liver mask (label 1) is empty")
        self.reference = parenchyma
        self.shape_zyx = parenchyma_array.shape
        self.voxel_volume_mm3 = float(np.prod(parenchyma.GetSpacing()))
        self.tumor_count = int(np.count_nonzero(tumor_array))
        self._box = _bounding_box(parenchyma_array | tumor_array)
        self._box_parenchyma = parenchyma_array[self._box]
        self._box_tumor = tumor_array[self._box] if self.tumor_count else None
        self._box_flat = np.flatnonzero(self._box_parenchyma)
        box_zyx = np.unravel_index(self._box_flat, self._box_parenchyma.shape)
        starts = [s.start for s in self._box]
        full_zyx = [coords + start for coords, start in zip(box_zyx, starts, strict=True)]
        self._full_flat = np.ravel_multi_index(full_zyx, self.shape_zyx)
        self._index_xyz = np.stack(full_zyx[::-1], axis=1).astype(np.float64)  # (N, 3): i, j, k = x, y, z
        self._tumor_distance_mm: np.ndarray | None = None

    @property
    def parenchyma_count(self) -> int:
        return int(self._box_flat.size)

    def mask_flags(self, mask: sitk.Image) -> np.ndarray:
        """Flags (N,) of the parenchyma voxels a painted resection mask (same grid) covers."""
        check_same_grid(mask, self.reference, "resection mask", "the liver labelmap")
        return _mask_array(mask, "resection mask").reshape(-1)[self._full_flat]

    def plane_flags(self, plane: Plane) -> np.ndarray:
        """Flags (N,) of the parenchyma voxels whose centre lies on the normal's side of ``plane``.

        Centre of voxel index (i, j, k): origin + D @ (spacing * (i, j, k)); the signed distance is
        (origin - point) . n + (i, j, k) . (spacing * (D^T n)), one dot product per voxel.
        """
        normal = np.asarray(plane.normal)
        direction = np.asarray(self.reference.GetDirection(), dtype=float).reshape(3, 3)
        weights = np.asarray(self.reference.GetSpacing()) * (direction.T @ normal)
        offset = float((np.asarray(self.reference.GetOrigin()) - np.asarray(plane.point_mm)) @ normal)
        return self._index_xyz @ weights + offset > PLANE_TOLERANCE_MM

    def margin_flags(self, margin_mm: float) -> np.ndarray:
        """Flags (N,) of the parenchyma voxels whose centre lies within ``margin_mm`` of a tumor voxel centre."""
        if not math.isfinite(margin_mm) or margin_mm < 0:
            raise ValueError(f"margin must be a finite number of mm >= 0, got {margin_mm}")
        if self._box_tumor is None:
            warnings.warn(
                "margin resection asked, but there is no tumor (label 2)", ResectionWarning, stacklevel=3
            )
            return np.zeros(self.parenchyma_count, dtype=bool)
        return self.tumor_distance_mm() <= margin_mm + MARGIN_TOLERANCE_MM

    def tumor_distance_mm(self) -> np.ndarray:
        """Distance (mm) from each parenchyma voxel centre to the nearest tumor voxel centre, shape (N,).

        Exact Euclidean distance transform with the voxel spacing over the bounding box of liver and
        tumors (it holds every tumor voxel, so cropping changes no distance); computed once and cached.
        """
        if self._tumor_distance_mm is None:
            if self._box_tumor is None:
                raise ValueError("no tumor (label 2): tumor distances are undefined")
            sampling_zyx = tuple(reversed(self.reference.GetSpacing()))
            distance = ndimage.distance_transform_edt(~self._box_tumor, sampling=sampling_zyx)
            self._tumor_distance_mm = distance.reshape(-1)[self._box_flat]
        return self._tumor_distance_mm

    def resected_flags(
        self,
        resection_mask: sitk.Image | None = None,
        planes: Sequence[Plane] = (),
        margin_mm: float | None = None,
    ) -> np.ndarray:
        """Union (N,) of the given resection definitions; none given -> nothing resected."""
        flags = np.zeros(self.parenchyma_count, dtype=bool)
        if resection_mask is not None:
            flags |= self.mask_flags(resection_mask)
        for plane in planes:
            plane_flags = self.plane_flags(plane)
            _warn_if_plane_misses(plane, plane_flags)
            flags |= plane_flags
        if margin_mm is not None:
            flags |= self.margin_flags(margin_mm)
        return flags

    def split_remnant(self, resected: np.ndarray, drop_disconnected: bool = False) -> RemnantSplit:
        """Find remnant pieces (6-connectivity) not connected to the largest; optionally resect them."""
        remnant = ~resected
        box = np.zeros(self._box_parenchyma.shape, dtype=bool)
        box.reshape(-1)[self._box_flat[remnant]] = True
        labels, count = ndimage.label(box, structure=_FACE_STRUCTURE)
        if count <= 1:
            return RemnantSplit(resected.copy(), remnant, (), drop_disconnected)
        sizes = np.bincount(labels.reshape(-1), minlength=count + 1)[1:]
        main_label = int(np.argmax(sizes)) + 1
        pieces = tuple(sorted((int(s) for i, s in enumerate(sizes) if i + 1 != main_label), reverse=True))
        if drop_disconnected:
            voxel_labels = labels.reshape(-1)[self._box_flat]
            resected = resected | (voxel_labels != main_label)
            remnant = ~resected
        return RemnantSplit(resected.copy(), remnant, pieces, drop_disconnected)

    def flags_to_image(self, flags: np.ndarray) -> sitk.Image:
        """A uint8 mask (1 where ``flags``) on the labelmap's grid, geometry copied."""
        array = np.zeros(self.shape_zyx, dtype=np.uint8)
        array.reshape(-1)[self._full_flat[flags]] = 1
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(self.reference)
        return image

    def tumor_image(self) -> sitk.Image:
        """The tumor mask (uint8, tumor voxels = 1) on the labelmap's grid."""
        array = np.zeros(self.shape_zyx, dtype=np.uint8)
        if self._box_tumor is not None:
            array[self._box] = self._box_tumor
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(self.reference)
        return image


def _warn_if_plane_misses(plane: Plane, flags: np.ndarray) -> None:
    """``ResectionWarning`` when ``plane`` leaves all the parenchyma on one side (it misses the liver)."""
    if flags.any() and not flags.all():
        return
    point = ", ".join(f"{c:g}" for c in plane.point_mm)
    normal = ", ".join(f"{c:.3g}" for c in plane.normal)
    what = ("misses the liver: all of it lies on the remnant side, nothing is resected" if not flags.any()
            else "resects the whole liver: all of it lies on the side the normal points to")
    warnings.warn(f"the plane through ({point}) mm with normal ({normal}) {what}; check the point (LPS) and the "
                  "direction of the normal", ResectionWarning, stacklevel=4)


def labelmap_masks(
    labels: sitk.Image, liver_label: int = 1, tumor_label: int = 2
) -> tuple[sitk.Image, sitk.Image]:
    """Parenchyma and tumor masks (uint8) from the cascade's 0/1/2 labelmap; other values are an error
    (``plausibility.check_labelmap``: a CT given as labels is named as such)."""
    check_labelmap(labels, "labelmap", allowed=(0, liver_label, tumor_label))
    array = sitk.GetArrayViewFromImage(labels)
    masks = []
    for label in (liver_label, tumor_label):
        mask = sitk.GetImageFromArray((array == label).astype(np.uint8))
        mask.CopyInformation(labels)
        masks.append(mask)
    return masks[0], masks[1]
