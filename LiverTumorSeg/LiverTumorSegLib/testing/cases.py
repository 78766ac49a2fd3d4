"""Test cases painted on any CT: a liver, a coded tumor and a hand-added tumor with known voxels (numpy truth).

The installed self-test scenarios run on whatever CT they are given (SampleData CTLiver inside Slicer, a phantom
in the headless suite), so they cannot rely on a truth labelmap that comes with the CT. ``painted_case`` paints
one: an ellipsoidal "Liver" (sized in mm from the CT's extent, centred in the grid), a spherical "Liver tumor"
inside it (both with the pipeline's terminology, as ``import_results`` makes them) and, optionally, a second
tumor the way a user adds one in Segment Editor: a segment named "Tumor 2" with Slicer's default terminology.
Shapes are in mm along the voxel axes, so any spacing and orientation works.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.scene import segmentations


@dataclass
class PaintedCase:
    """A CT volume node, its segmentation, and the truth: the liver ellipsoid and the tumor spheres (z, y, x)."""

    volume: object
    segmentation: object
    liver: np.ndarray  # every voxel of the liver, tumors included
    tumors: list[np.ndarray] = field(default_factory=list)  # [coded "Liver tumor", hand-added "Tumor 2"]
    hand_tumor_id: str | None = None

    @property
    def tumor(self) -> np.ndarray:
        return np.logical_or.reduce(self.tumors) if self.tumors else np.zeros_like(self.liver)

    def labels(self) -> sitk.Image:
        """The truth as a 0/1/2 labelmap on the CT grid (1 liver parenchyma, 2 any tumor)."""
        array = np.where(self.tumor, 2, np.where(self.liver, 1, 0)).astype(np.uint8)
        return segmentations.image_on_volume_grid(array, self.volume)

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.volume.GetSpacing())) / 1000.0


def _grid_mm(volume_node) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Open (z, y, x) coordinate grids in mm along the voxel axes from the grid centre, the spacing and extent."""
    size_xyz = np.array(volume_node.GetImageData().GetDimensions())
    spacing_xyz = np.array(volume_node.GetSpacing())
    centre = (size_xyz - 1) / 2.0
    z, y, x = np.ogrid[: size_xyz[2], : size_xyz[1], : size_xyz[0]]
    return [(x - centre[0]) * spacing_xyz[0], (y - centre[1]) * spacing_xyz[1], (z - centre[2]) * spacing_xyz[2]], \
        spacing_xyz, size_xyz * spacing_xyz


def _ellipsoid(coords, centre, semi_axes) -> np.ndarray:
    return sum(((c - o) / a) ** 2 for c, o, a in zip(coords, centre, semi_axes, strict=True)) <= 1.0


def painted_case(scene, volume_node, *, hand_tumor: bool = True) -> PaintedCase:
    """A segmentation of ``volume_node`` with "Liver", "Liver tumor" and (``hand_tumor``) "Tumor 2"."""
    coords, spacing, extent = _grid_mm(volume_node)
    semi = np.maximum(np.minimum([80.0, 60.0, 50.0], [0.3, 0.3, 0.35] * extent), 3.0 * spacing)
    liver = _ellipsoid(coords, (0.0, 0.0, 0.0), semi)
    radius = np.maximum(0.3 * semi.min(), 2.5 * spacing)
    coded = _ellipsoid(coords, (0.45 * semi[0], 0.0, 0.0), radius) & liver
    tumors = [coded]
    if hand_tumor:
        tumors.append(_ellipsoid(coords, (-0.45 * semi[0], 0.1 * semi[1], 0.0), 0.7 * radius) & liver)
    labels = np.where(coded, 2, np.where(liver, 1, 0)).astype(np.uint8)
    node = segmentations.labelmap_to_segmentation(segmentations.image_on_volume_grid(labels, volume_node),
                                                  volume_node, name=f"{volume_node.GetName()} painted", scene=scene)
    case = PaintedCase(volume_node, node, liver, tumors)
    if hand_tumor:
        case.hand_tumor_id = node.GetSegmentation().AddEmptySegment("", "Tumor 2")
        segmentations.import_labelmap_segments(node, tumors[1].astype(np.uint8), [case.hand_tumor_id], volume_node)
    for tumor in tumors:
        assert tumor.any(), f"the CT grid {volume_node.GetImageData().GetDimensions()} is too small for the case"
    return case
