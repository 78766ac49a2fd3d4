"""Segments as masks on a CT's voxel grid, re-read only when a segment changed (no Qt).

``SegmentMaskReader`` keeps each segment's mask (a ``core.box_masks.BoxMask``: its bounding box on the CT grid)
with a cheap change key: the segment's label value and the modification time of the labelmap layer that holds
it, plus the parent transforms of the segmentation and the CT. An edit in Segment Editor modifies one layer, so
only the segments of that layer are read again; the others come from the cache.

Reading: when the segment's binary labelmap lies on the CT's own grid (same IJK-to-RAS matrix, the usual case
for segmentations made on the CT) and the segmentation and the CT are under the same parent transform, the
voxels are taken straight from the shared labelmap layer (no copy of the full grid, no temporary nodes);
otherwise they are exported onto the CT grid by Slicer (``segmentations.segments_mask``: resampled, transforms
applied). Both give the same voxels on the CT grid.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from LiverTumorSegLib.core.box_masks import BoxMask, union
from LiverTumorSegLib.scene import segmentations

_MATRIX_TOLERANCE = 1e-6


def _matrix(getter) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    getter(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _binary_labelmap_name() -> str:
    return slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()


class SegmentMaskReader:
    """Masks of the segments of ``segmentation_node`` on the voxel grid of ``reference_volume_node``.

    ``mask(segment_id)`` returns a ``BoxMask`` (cached until the segment changes); ``union(ids)`` the union;
    ``reads`` counts the segments actually read (for tests and benchmarks).
    """

    def __init__(self, segmentation_node, reference_volume_node) -> None:
        if segmentation_node is None or reference_volume_node is None or reference_volume_node.GetImageData() is None:
            raise ValueError("reading segments needs a segmentation node and its CT volume node")
        self.segmentation_node = segmentation_node
        self.reference_volume_node = reference_volume_node
        self.reads = 0
        self._cache: dict[str, tuple[tuple, BoxMask]] = {}

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(self.reference_volume_node.GetImageData().GetDimensions()[::-1])

    def _labelmap(self, segment):
        """The segment's binary labelmap layer when it is the source representation, else None."""
        segmentation = self.segmentation_node.GetSegmentation()
        if segmentation.GetSourceRepresentationName() != _binary_labelmap_name():
            return None
        return segment.GetRepresentation(_binary_labelmap_name())

    def fingerprint(self, segment_id: str) -> tuple:
        """Cheap change key of one segment (label value, layer modification time, transforms, CT geometry)."""
        segment = self.segmentation_node.GetSegmentation().GetSegment(segment_id)
        if segment is None:
            raise KeyError(f"segmentation {self.segmentation_node.GetName()!r} has no segment {segment_id!r}")
        labelmap = self._labelmap(segment)
        layer = ((labelmap.GetAddressAsString("vtkObject"), labelmap.GetMTime()) if labelmap is not None
                 else self.segmentation_node.GetMTime())
        return (segment.GetLabelValue(), layer, self.segmentation_node.GetTransformNodeID(),
                self.reference_volume_node.GetTransformNodeID(), self.reference_volume_node.GetImageData().GetMTime())

    def mask(self, segment_id: str) -> BoxMask:
        """The segment's voxels on the CT grid (re-read only when ``fingerprint`` changed)."""
        key = self.fingerprint(segment_id)
        cached = self._cache.get(segment_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        self.reads += 1
        mask = self._read_direct(segment_id)
        if mask is None:
            exported = segmentations.segments_mask(self.segmentation_node, [segment_id], self.reference_volume_node)
            mask = BoxMask.from_array(sitk.GetArrayViewFromImage(exported))
        self._cache[segment_id] = (key, mask)
        return mask

    def union(self, segment_ids) -> BoxMask:
        return union((self.mask(segment_id) for segment_id in segment_ids), self.shape_zyx)

    def forget(self, keep=()) -> None:
        """Drop cached masks of segments not in ``keep`` (e.g. deleted segments)."""
        for segment_id in [s for s in self._cache if s not in keep]:
            del self._cache[segment_id]

    def _read_direct(self, segment_id: str) -> BoxMask | None:
        """The mask from the shared labelmap layer when it lies on the CT grid; None when it must be exported."""
        segment = self.segmentation_node.GetSegmentation().GetSegment(segment_id)
        labelmap = self._labelmap(segment)
        if labelmap is None or self.segmentation_node.GetTransformNodeID() != self.reference_volume_node.GetTransformNodeID():
            return None
        if not np.allclose(_matrix(labelmap.GetImageToWorldMatrix), _matrix(self.reference_volume_node.GetIJKToRASMatrix),
                           rtol=0.0, atol=_MATRIX_TOLERANCE):
            return None
        shape = self.shape_zyx
        extent = labelmap.GetExtent()
        if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
            return BoxMask.empty(shape)
        scalars = labelmap.GetPointData().GetScalars()
        if scalars is None:
            return BoxMask.empty(shape)
        dims_zyx = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
        layer = numpy_support.vtk_to_numpy(scalars).reshape(dims_zyx)
        # the part of the layer's extent that lies on the CT grid
        start = [max(0, extent[4]), max(0, extent[2]), max(0, extent[0])]
        stop = [min(shape[0], extent[5] + 1), min(shape[1], extent[3] + 1), min(shape[2], extent[1] + 1)]
        if any(b <= a for a, b in zip(start, stop, strict=True)):
            return BoxMask.empty(shape)
        origin = (extent[4], extent[2], extent[0])
        view = layer[tuple(slice(a - o, b - o) for a, b, o in zip(start, stop, origin, strict=True))]
        return BoxMask.from_array(view == segment.GetLabelValue(), start, shape)
