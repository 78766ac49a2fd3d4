"""One voxel grid test for the whole library: do two images (or an image and a volume node) share their voxels?

A grid is size (voxels x, y, z), spacing (mm), origin (LPS mm) and direction (3x3 cosines, row-major, columns =
voxel axes). Two grids are the same when the sizes are equal, origin and spacing differ by at most a thousandth
of the smallest voxel spacing (``GRID_TOLERANCE_VOXEL_FRACTION``: float32 NIfTI headers and DICOM decimal
strings stay far inside it, a real shift does not) and the direction cosines by at most
``GRID_TOLERANCE_DIRECTION``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

GRID_TOLERANCE_VOXEL_FRACTION = 1e-3
GRID_TOLERANCE_DIRECTION = 1e-5


@dataclass(frozen=True)
class Grid:
    """A voxel grid in SimpleITK's conventions (LPS, mm)."""

    size: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    origin_mm: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))


def _rounded(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 6) for v in values)


def grid_differences(grid: Grid, reference: Grid) -> list[str]:
    """What differs between ``grid`` and ``reference`` (empty when they are the same grid), for messages."""
    if grid.size != reference.size:
        return [f"size {grid.size} vs {reference.size}"]
    tolerance_mm = GRID_TOLERANCE_VOXEL_FRACTION * min(reference.spacing_mm)
    problems = []
    for name, mine, theirs, tolerance, unit in (
            ("spacing", grid.spacing_mm, reference.spacing_mm, tolerance_mm, " mm"),
            ("origin", grid.origin_mm, reference.origin_mm, tolerance_mm, " mm (LPS)"),
            ("direction", grid.direction, reference.direction, GRID_TOLERANCE_DIRECTION, "")):
        if len(mine) != len(theirs) or not np.allclose(mine, theirs, rtol=0.0, atol=tolerance):
            problems.append(f"{name} {_rounded(mine)} vs {_rounded(theirs)}{unit}")
    return problems


def same_grid(image: sitk.Image, reference: sitk.Image) -> bool:
    """Whether the two images lie voxel for voxel on one grid (see the module docstring)."""
    return not grid_differences(Grid.of(image), Grid.of(reference))


def check_same_grid(image: sitk.Image | Grid, reference: sitk.Image | Grid, what: str = "image",
                    reference_what: str = "the reference image") -> None:
    """``ValueError`` "<what> is not on the grid of <reference_what>: <differences>" unless the grids match."""
    grid = image if isinstance(image, Grid) else Grid.of(image)
    reference_grid = reference if isinstance(reference, Grid) else Grid.of(reference)
    problems = grid_differences(grid, reference_grid)
    if problems:
        raise ValueError(f"{what} is not on the grid of {reference_what}: " + "; ".join(problems))
