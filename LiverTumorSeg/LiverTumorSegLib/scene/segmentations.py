"""Segmentation nodes: labelmaps in (with terminology), segment masks out on a CT's grid, masks written into
segments, ``.seg.nrrd`` files; the one home of these operations in the library (no Qt).

Masks are ``SimpleITK.Image`` uint8 0/1 on the reference volume's voxel grid (LPS geometry of the volume node);
arrays are (z, y, x). Exports go through the Segmentations logic (``ExportSegmentsToLabelmapNode``), so
segments stored cropped, in several layers or under a transform come back on the full reference grid; imports
build a ``vtkOrientedImageData`` with the reference volume's IJK-to-RAS matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import slicer.util
import vtk

from LiverTumorSegLib.core.terminology import DEFAULT_SEGMENTS, load_segment_definitions
from LiverTumorSegLib.scene.volumes import _check_same_grid, _scene_or_default, node_geometry_lps


def segment_ids(segmentation_node) -> list[str]:
    """All segment ids of a segmentation node, in order."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def segment_names(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetSegment(segment_id).GetName() for segment_id in segment_ids(segmentation_node)]


def resolve_segment_id(segmentation_node, name_or_id: str) -> str:
    """The id of the segment named ``name_or_id`` (or with that id); ``KeyError`` listing the segments."""
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(name_or_id)
    if segment_id:
        return segment_id
    if segmentation.GetSegment(name_or_id) is not None:
        return name_or_id
    raise KeyError(f"segmentation {segmentation_node.GetName()!r} has no segment {name_or_id!r}; "
                   f"segments: {segment_names(segmentation_node)}")


def _node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _remove_new_nodes(scene, node_ids_before: set[str]) -> None:
    """Remove the nodes added since ``node_ids_before`` (temporary labelmap, its display and colour nodes)."""
    for node in [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]:
        if node.GetID() not in node_ids_before:
            scene.RemoveNode(node)


def image_on_volume_grid(voxels_zyx: np.ndarray, volume_node) -> sitk.Image:
    """A SimpleITK image of ``voxels_zyx`` with the LPS geometry of ``volume_node``."""
    image = sitk.GetImageFromArray(voxels_zyx)
    origin, spacing, direction = node_geometry_lps(volume_node)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def segments_mask(segmentation_node, ids: Iterable[str], reference_volume_node) -> sitk.Image:
    """Union of the segments ``ids`` as a uint8 0/1 image on the reference volume's grid.

    Temporary nodes of the export (labelmap, display, colour table) are removed again.
    """
    ids = list(ids)
    scene = segmentation_node.GetScene()
    if scene is None:
        raise ValueError(f"segmentation {segmentation_node.GetName()!r} is not in a scene")
    id_array = vtk.vtkStringArray()
    for segment_id in ids:
        id_array.InsertNextValue(segment_id)
    nodes_before = _node_ids(scene)
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__segment_mask__")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, id_array, labelmap_node, reference_volume_node):
            raise RuntimeError(f"Slicer could not export segments {ids} of {segmentation_node.GetName()!r}")
        mask_zyx = (slicer.util.arrayFromVolume(labelmap_node) > 0).astype(np.uint8)
    finally:
        _remove_new_nodes(scene, nodes_before)
    return image_on_volume_grid(mask_zyx, reference_volume_node)


def segment_mask(segmentation_node, name_or_id: str, reference_volume_node) -> sitk.Image:
    """One segment (by name, or id) as a uint8 0/1 image on the reference volume's grid."""
    return segments_mask(segmentation_node, [resolve_segment_id(segmentation_node, name_or_id)],
                         reference_volume_node)


def oriented_image(voxels_zyx: np.ndarray, reference_volume_node, start_ijk: tuple[int, int, int] = (0, 0, 0)):
    """``vtkOrientedImageData`` holding ``voxels_zyx`` at voxel ``start_ijk`` (i, j, k) of the reference volume's
    grid, with its IJK-to-RAS geometry (a box of the full grid when ``start_ijk`` is not the origin)."""
    from vtk.util import numpy_support

    voxels_zyx = np.ascontiguousarray(voxels_zyx)
    image = slicer.vtkOrientedImageData()
    size_xyz = voxels_zyx.shape[::-1]
    image.SetExtent(*(value for axis in range(3) for value in (start_ijk[axis], start_ijk[axis] + size_xyz[axis] - 1)))
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(voxels_zyx.ravel(), deep=True))
    ijk_to_ras = vtk.vtkMatrix4x4()
    reference_volume_node.GetIJKToRASMatrix(ijk_to_ras)
    image.SetImageToWorldMatrix(ijk_to_ras)
    return image


def _bounding_box_image(mask: sitk.Image, reference_volume_node):
    """The mask's bounding box (0/1) as an oriented image on the reference grid; an empty mask -> one zero voxel."""
    inside_zyx = sitk.GetArrayViewFromImage(mask) != 0
    hits = [np.flatnonzero(inside_zyx.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    box = tuple(slice(h[0], h[-1] + 1) if h.size else slice(0, 1) for h in hits)
    return oriented_image(inside_zyx[box].astype(np.uint8), reference_volume_node,
                          (box[2].start, box[1].start, box[0].start))


def set_segment_mask(segmentation_node, segment_id: str, mask: sitk.Image, reference_volume_node) -> None:
    """Replace a segment's binary labelmap by ``mask`` (non-zero = inside, on the reference volume's grid)
    the way Segment Editor effects do (``SetBinaryLabelmapToSegment``); no temporary nodes.

    Only the mask's bounding box is handed over (fast); ``MODE_REPLACE`` without an extent replaces the
    whole segment, so its old content outside the box is cleared. A transform between the volume and the
    segmentation is applied.
    """
    oriented = _bounding_box_image(mask, reference_volume_node)
    volume_parent = reference_volume_node.GetParentTransformNode()
    segmentation_parent = segmentation_node.GetParentTransformNode()
    if volume_parent is not segmentation_parent:
        volume_to_segmentation = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(volume_parent, segmentation_parent,
                                                             volume_to_segmentation)
        slicer.vtkOrientedImageDataResample.TransformOrientedImage(oriented, volume_to_segmentation)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(oriented, segmentation_node, segment_id, logic.MODE_REPLACE):
        raise RuntimeError(f"Slicer could not write segment {segment_id!r} of {segmentation_node.GetName()!r}")


def import_labelmap_segments(segmentation_node, voxels_zyx: np.ndarray, ids: list[str], reference_volume_node) -> None:
    """Fill the existing segments ``ids`` from a labelmap array on the reference grid: value k -> ``ids[k-1]``."""
    id_array = vtk.vtkStringArray()
    for segment_id in ids:
        id_array.InsertNextValue(segment_id)
    oriented = oriented_image(voxels_zyx.astype(np.uint8), reference_volume_node)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(oriented, segmentation_node,
                                                                                      id_array):
        raise RuntimeError(f"Slicer could not import the labelmap into {segmentation_node.GetName()!r}")


class SegmentationLabelWarning(UserWarning):
    """A labelmap holds label values that no requested segment takes."""


def _compact_labels(labels: sitk.Image, segments: Mapping[int, str]) -> np.ndarray:
    """uint8 (z, y, x) array: voxels of the i-th requested label value -> i (1-based), others -> 0."""
    label_zyx = sitk.GetArrayViewFromImage(labels)
    compact = np.zeros(label_zyx.shape, dtype=np.uint8)
    for index, value in enumerate(segments, start=1):
        compact[label_zyx == value] = index
    present = set(np.unique(label_zyx).tolist()) - {0}
    unused = sorted(present - set(segments))
    if unused:
        warnings.warn(
            f"label values {unused} have no segment in {dict(segments)} and are left out",
            SegmentationLabelWarning,
            stacklevel=3,
        )
    return compact


def labelmap_to_segmentation(
    labels: sitk.Image,
    reference_volume_node,
    *,
    name: str | None = None,
    segments: Mapping[int, str] = DEFAULT_SEGMENTS,
    scene=None,
):
    """A new segmentation node with one segment per ``{label value: segment id}`` of ``segments``.

    ``labels``: integer labelmap on the reference volume's grid (same size, spacing, origin and
    direction; ``ValueError`` otherwise). Segment ids, names, colours and ``TerminologyEntry`` tags
    come from ``segment_terminology.json``; segments are created (possibly empty) in the order of
    ``segments`` and share one labelmap layer. The reference geometry is set from the volume node, so
    Segment Editor and DICOM SEG export use the CT grid. The node is added to ``scene`` (default: the
    reference volume's scene).
    """
    if len(segments) > 255:
        raise ValueError(f"at most 255 segments per labelmap layer, got {len(segments)}")
    definitions = load_segment_definitions()
    unknown = [segment_id for segment_id in segments.values() if segment_id not in definitions]
    if unknown:
        raise KeyError(
            f"segment ids {unknown} are not in segment_terminology.json; known: {', '.join(definitions)}"
        )
    _check_same_grid(labels, reference_volume_node)
    compact_zyx = _compact_labels(labels, segments)

    scene = scene if scene is not None else (reference_volume_node.GetScene() or slicer.mrmlScene)
    node = scene.AddNewNodeByClass(
        "vtkMRMLSegmentationNode", name or f"{reference_volume_node.GetName()} segmentation"
    )
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    segmentation = node.GetSegmentation()
    segment_ids = vtk.vtkStringArray()
    for segment_id in segments.values():
        definition = definitions[segment_id]
        segmentation.AddEmptySegment(segment_id, definition.name, definition.color_rgb)
        segment = segmentation.GetSegment(segment_id)
        segment.SetTerminology(definition.terminology_entry)
        segment.SetNameAutoGenerated(False)  # deliberate names and colours: Slicer must not replace them
        segment.SetColorAutoGenerated(False)
        segment_ids.InsertNextValue(segment_id)
    try:
        import_labelmap_segments(node, compact_zyx, [segment_ids.GetValue(i) for i in range(segment_ids.GetNumberOfValues())],
                                 reference_volume_node)
    except RuntimeError:
        scene.RemoveNode(node)
        raise
    return node


def save_segmentation(segmentation_node, path: str | Path, *, crop_to_minimum_extent: bool = False) -> Path:
    """Write ``segmentation_node`` to ``path`` (``.seg.nrrd``) through its segmentation storage node.

    By default the labelmap is written on the full reference grid; ``crop_to_minimum_extent=True``
    writes only the extent the segments occupy (Slicer's option; the reference geometry is kept in the
    header, so ``segment_mask`` still returns full-grid masks after loading).
    """
    path = Path(path)
    if not path.name.endswith(".seg.nrrd"):
        raise ValueError(f"{path}: a segmentation file name must end with .seg.nrrd")
    storage_node = segmentation_node.GetStorageNode()
    if storage_node is None:
        segmentation_node.AddDefaultStorageNode()
        storage_node = segmentation_node.GetStorageNode()
    storage_node.SetCropToMinimumExtent(crop_to_minimum_extent)
    storage_node.SetFileName(str(path))
    if not storage_node.WriteData(segmentation_node):
        raise OSError(f"Could not write segmentation {segmentation_node.GetName()!r} to {path}")
    return path


def load_segmentation(path: str | Path, scene=None):
    """A new segmentation node read from a ``.seg.nrrd`` file (segments, names, colours, tags)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmentation file not found: {path}")
    scene = _scene_or_default(scene)
    name = path.name[: -len(".seg.nrrd")] if path.name.endswith(".seg.nrrd") else path.stem
    storage_node = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.SetAndObserveStorageNodeID(storage_node.GetID())
    storage_node.SetFileName(str(path))
    if not storage_node.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage_node)
        raise ValueError(f"{path}: not a readable Slicer segmentation file")
    node.CreateDefaultDisplayNodes()
    return node
