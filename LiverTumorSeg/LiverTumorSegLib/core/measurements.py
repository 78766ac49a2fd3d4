"""Lesion table and volumes of a 0/1/2 labelmap (0 background, 1 liver parenchyma, 2 tumor).

Pure numpy / scipy / SimpleITK (no torch). Conventions:

- Lesions are the connected components of label 2 with **26-connectivity** (voxels touching by a face,
  an edge or a corner belong to the same lesion): a lesion whose digitised outline has thin diagonal
  bridges is not split into several "multiple" lesions, which would change the T category. The same
  rule is used by the cascade when it removes small components. Lesion ids are 1, 2, ... by decreasing
  volume.
- ``volume_ml``: voxel count x voxel volume (mm^3) / 1000.
- ``longest_axial_diameter_mm``: for each axial slice, the largest in-plane Feret (caliper) diameter of
  the lesion's cross-section in mm (outermost voxel centres plus one voxel: the edge-to-edge length a
  reader would caliper); the maximum over slices. "Axial" slices are those of the image axis closest
  to the patient's superior-inferior axis (for an oblique acquisition: its own slice plane). The
  image direction matrix is assumed orthonormal (as ITK requires for physical measurements).
- ``centroid_mm``: centre of mass in physical LPS patient coordinates (mm), direction included.
- ``liver_volume_ml`` is the total liver volume (TLV: parenchyma + tumors, labels 1 and 2);
  ``parenchyma_volume_ml`` is label 1 and ``tumor_volume_ml`` label 2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

LIVER_LABEL = 1
TUMOR_LABEL = 2


@dataclass(frozen=True)
class Lesion:
    """One tumor component: id (1 = largest), volume in mL, longest axial diameter in mm, LPS centroid."""

    id: int
    volume_ml: float
    longest_axial_diameter_mm: float
    centroid_mm: tuple[float, float, float]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LabelmapMeasurements:
    """Volumes (mL) of a 0/1/2 labelmap and its lesion table."""

    liver_volume_ml: float
    parenchyma_volume_ml: float
    tumor_volume_ml: float
    lesions: list[Lesion] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def voxel_volume_ml(image: sitk.Image) -> float:
    """Volume of one voxel of ``image`` in mL (spacing in mm)."""
    return float(np.prod(image.GetSpacing())) / 1000.0


def connected_components(mask: sitk.Image, min_voxels: int = 0) -> sitk.Image:
    """26-connected components of a binary image, relabelled 1..n by decreasing size (uint32 image).

    Components with fewer than ``min_voxels`` voxels are removed.
    """
    components = sitk.ConnectedComponent(sitk.Cast(mask > 0, sitk.sitkUInt8), True)
    return sitk.RelabelComponent(components, minimumObjectSize=int(min_voxels), sortByObjectSize=True)


def axial_axis(image: sitk.Image) -> int:
    """Image axis (0 = i/x, 1 = j/y, 2 = k/z) whose direction is closest to the patient S-I axis."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    return int(np.argmax(np.abs(direction[2, :])))


def _edge_to_edge_mm(centres_mm: np.ndarray, spacing_mm: np.ndarray) -> float:
    """Largest edge-to-edge length (mm) of a set of 2D voxel centres (see ``slice_feret_diameter_mm``)."""
    if len(centres_mm) < 2:
        return float(spacing_mm.max())
    try:
        centres_mm = centres_mm[ConvexHull(centres_mm).vertices]
    except (QhullError, ValueError):  # collinear points (a one-voxel-wide line): compare them all
        pass
    delta = centres_mm[:, None, :] - centres_mm[None, :, :]
    length = np.linalg.norm(delta, axis=-1)
    unit = delta / np.where(length > 0, length, 1.0)[..., None]
    voxel_extent = np.linalg.norm(unit * spacing_mm, axis=-1)
    return float(np.max(length + np.where(length > 0, voxel_extent, spacing_mm.max())))


def slice_feret_diameter_mm(section: np.ndarray, spacing_mm: tuple[float, float]) -> float:
    """Largest Feret (caliper) diameter in mm of a 2D boolean cross-section indexed (a, b).

    The distance between the two outermost voxel centres plus one voxel along that line (each centre lies
    half a voxel inside the lesion's edge): within one voxel of the diameter of the continuous shape,
    where centres alone are up to two voxels short and outer corners up to ~1.4 voxels long.
    ``spacing_mm = (sa, sb)`` are the pixel spacings of the two axes.
    """
    if not section.any():
        return 0.0
    boundary = section & ~ndimage.binary_erosion(section)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    centres = np.stack(np.nonzero(boundary), axis=1) * spacing
    return _edge_to_edge_mm(centres, spacing)


def longest_axial_diameter_mm(mask_zyx: np.ndarray, spacing_xyz: tuple[float, ...], axis: int) -> float:
    """Max over axial slices of the in-plane Feret diameter (mm) of a boolean (z, y, x) array.

    ``axis`` is the image axis (0 = x, 1 = y, 2 = z) across which slices are taken.
    """
    array_axis = 2 - axis
    in_plane = [a for a in range(3) if a != array_axis]
    spacing_zyx = tuple(spacing_xyz[::-1])
    plane_spacing = (spacing_zyx[in_plane[0]], spacing_zyx[in_plane[1]])
    best = 0.0
    for index in np.nonzero(mask_zyx.any(axis=tuple(in_plane)))[0]:
        section = np.take(mask_zyx, index, axis=array_axis)
        best = max(best, slice_feret_diameter_mm(section, plane_spacing))
    return best


def measure_lesions(labels: sitk.Image, tumor_label: int = TUMOR_LABEL) -> list[Lesion]:
    """Lesion table of ``labels`` (any integer labelmap): components of ``tumor_label``, largest first."""
    components = connected_components(labels == tumor_label)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(components)
    component_array = sitk.GetArrayViewFromImage(components)  # (z, y, x)
    spacing, axis = labels.GetSpacing(), axial_axis(labels)
    lesions = []
    for label in sorted(stats.GetLabels()):
        x0, y0, z0, sx, sy, sz = stats.GetBoundingBox(label)
        box = component_array[z0 : z0 + sz, y0 : y0 + sy, x0 : x0 + sx] == label
        lesions.append(
            Lesion(
                id=int(label),
                volume_ml=stats.GetNumberOfPixels(label) * voxel_volume_ml(labels),
                longest_axial_diameter_mm=longest_axial_diameter_mm(box, spacing, axis),
                centroid_mm=tuple(float(c) for c in stats.GetCentroid(label)),
            )
        )
    return lesions


def measure_labelmap(labels: sitk.Image) -> LabelmapMeasurements:
    """Volumes and lesion table of a 0/1/2 liver/tumor labelmap (see module docstring)."""
    array = sitk.GetArrayViewFromImage(labels)
    voxel_ml = voxel_volume_ml(labels)
    parenchyma = int(np.count_nonzero(array == LIVER_LABEL)) * voxel_ml
    tumor = int(np.count_nonzero(array == TUMOR_LABEL)) * voxel_ml
    return LabelmapMeasurements(
        liver_volume_ml=parenchyma + tumor,
        parenchyma_volume_ml=parenchyma,
        tumor_volume_ml=tumor,
        lesions=measure_lesions(labels),
    )
