"""Binary masks kept as their bounding box on a voxel grid, and images cropped from a grid (numpy, SimpleITK).

A liver fills about a tenth of an abdominal CT and a tumor far less: measuring inside the bounding box instead of
the full 512 x 512 x 200 grid is what keeps live measurements after an edit fast. Arrays are (z, y, x); a
``BoxMask`` is the full-grid shape, the (z, y, x) start of its box and the boolean box itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.core.grid import Grid


def bounding_box(mask_zyx: np.ndarray) -> tuple[slice, slice, slice] | None:
    """(z, y, x) slices of the smallest box holding every True voxel of ``mask_zyx``; None when it has none.

    The slab of slices that hold voxels is found first, so the in-plane search reads only that slab.
    """
    z_hits = np.flatnonzero(mask_zyx.any(axis=(1, 2)))
    if z_hits.size == 0:
        return None
    z = slice(int(z_hits[0]), int(z_hits[-1]) + 1)
    slab = mask_zyx[z]
    y_hits = np.flatnonzero(slab.any(axis=(0, 2)))
    x_hits = np.flatnonzero(slab[:, y_hits[0]:y_hits[-1] + 1].any(axis=(0, 1)))
    return z, slice(int(y_hits[0]), int(y_hits[-1]) + 1), slice(int(x_hits[0]), int(x_hits[-1]) + 1)


@dataclass(frozen=True, eq=False)
class BoxMask:
    """A boolean mask of a grid of shape ``shape_zyx``, stored as ``box`` starting at voxel ``start_zyx``."""

    shape_zyx: tuple[int, int, int]
    start_zyx: tuple[int, int, int]
    box: np.ndarray

    @classmethod
    def empty(cls, shape_zyx) -> BoxMask:
        return cls(tuple(int(n) for n in shape_zyx), (0, 0, 0), np.zeros((0, 0, 0), bool))

    @classmethod
    def from_array(cls, mask_zyx: np.ndarray, offset_zyx=(0, 0, 0), shape_zyx=None) -> BoxMask:
        """The mask of ``mask_zyx`` (non-zero = inside), which lies at ``offset_zyx`` of a grid of ``shape_zyx``
        (default: ``mask_zyx`` is the whole grid)."""
        shape = tuple(int(n) for n in (shape_zyx if shape_zyx is not None else mask_zyx.shape))
        inside = mask_zyx if mask_zyx.dtype == bool else mask_zyx != 0
        box = bounding_box(inside)
        if box is None:
            return cls.empty(shape)
        start = tuple(int(o) + b.start for o, b in zip(offset_zyx, box, strict=True))
        return cls(shape, start, np.ascontiguousarray(inside[box]))

    @property
    def stop_zyx(self) -> tuple[int, int, int]:
        return tuple(s + n for s, n in zip(self.start_zyx, self.box.shape, strict=True))

    @property
    def is_empty(self) -> bool:
        return self.box.size == 0

    @cached_property
    def count(self) -> int:
        """Number of voxels inside."""
        return int(np.count_nonzero(self.box))

    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start_zyx, self.stop_zyx, strict=True))

    def full(self) -> np.ndarray:
        """The mask on the whole grid (bool, ``shape_zyx``)."""
        array = np.zeros(self.shape_zyx, bool)
        if not self.is_empty:
            array[self.slices()] = self.box
        return array

    def region(self, start_zyx, stop_zyx) -> np.ndarray:
        """The mask inside the box [start, stop) of the grid (bool, zeros where this mask has no voxel)."""
        out = np.zeros(tuple(b - a for a, b in zip(start_zyx, stop_zyx, strict=True)), bool)
        if self.is_empty:
            return out
        lo = [max(a, s) for a, s in zip(start_zyx, self.start_zyx, strict=True)]
        hi = [min(b, e) for b, e in zip(stop_zyx, self.stop_zyx, strict=True)]
        if any(h <= low for low, h in zip(lo, hi, strict=True)):
            return out
        target = tuple(slice(low - a, h - a) for low, h, a in zip(lo, hi, start_zyx, strict=True))
        source = tuple(slice(low - s, h - s) for low, h, s in zip(lo, hi, self.start_zyx, strict=True))
        out[target] = self.box[source]
        return out

    @cached_property
    def digest(self) -> str:
        """Content fingerprint: equal digests = the same voxels (wherever and however they are stored)."""
        hasher = hashlib.blake2b(digest_size=16)
        hasher.update(repr((self.shape_zyx, self.start_zyx if not self.is_empty else None, self.box.shape)).encode())
        hasher.update(np.packbits(self.box.reshape(-1)).tobytes())
        return hasher.hexdigest()


def union(masks: Iterable[BoxMask], shape_zyx) -> BoxMask:
    """The union of ``masks`` (all of a grid of ``shape_zyx``)."""
    present = [mask for mask in masks if not mask.is_empty]
    if not present:
        return BoxMask.empty(shape_zyx)
    if len(present) == 1:
        return present[0]
    start = tuple(min(m.start_zyx[a] for m in present) for a in range(3))
    stop = tuple(max(m.stop_zyx[a] for m in present) for a in range(3))
    box = np.zeros(tuple(b - a for a, b in zip(start, stop, strict=True)), bool)
    for mask in present:
        box |= mask.region(start, stop)
    return BoxMask(tuple(int(n) for n in shape_zyx), start, box)


def common_box(masks: Iterable[BoxMask]) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """(start, stop) (z, y, x) of the box holding every non-empty mask; None when all are empty."""
    present = [mask for mask in masks if not mask.is_empty]
    if not present:
        return None
    return (tuple(min(m.start_zyx[a] for m in present) for a in range(3)),
            tuple(max(m.stop_zyx[a] for m in present) for a in range(3)))


def cropped_image(array_zyx: np.ndarray, start_zyx, grid: Grid) -> sitk.Image:
    """``array_zyx`` as an image whose voxel (0, 0, 0) is voxel ``start_zyx`` of ``grid`` (LPS geometry: same
    spacing and direction, origin moved along the voxel axes), so physical measurements equal the full grid's."""
    image = sitk.GetImageFromArray(array_zyx)
    direction = np.asarray(grid.direction, dtype=float).reshape(3, 3)
    start_xyz = np.asarray(start_zyx[::-1], dtype=float)
    image.SetOrigin(tuple(np.asarray(grid.origin_mm) + direction @ (start_xyz * np.asarray(grid.spacing_mm))))
    image.SetSpacing(grid.spacing_mm)
    image.SetDirection(grid.direction)
    return image
