"""Scene bridge: core results (``SimpleITK.Image``) to MRML nodes and back.

Imports ``slicer`` MRML classes and ``slicer.util`` array helpers, never Qt and never ``slicer.app``, so
the same code runs inside Slicer and in the headless tests on the slicer-core wheel.

Geometry: SimpleITK images are LPS, MRML is RAS. A volume node keeps its origin, spacing and
IJK-to-RAS directions; the conversion flips the first two physical axes exactly
(``origin_lps = (-x, -y, z)``, ``direction_lps = diag(-1, -1, 1) @ direction_ras``). Voxel arrays are
(z, y, x) on both sides (``sitk.GetArrayFromImage`` and ``slicer.util.arrayFromVolume`` agree).
Parent transforms of nodes are not applied: a node's own IJK-to-RAS geometry is used.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer
import slicer.util
import vtk

from .hu_windows import HUWindow
from .segment_terminology import DEFAULT_SEGMENTS, load_segment_definitions

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
# Same grid: origin and spacing within this fraction of the smallest spacing, directions within 1e-6.
GRID_TOLERANCE_SPACING_FRACTION = 1e-4
GRID_TOLERANCE_DIRECTION = 1e-6


class SceneGeometryWarning(UserWarning):
    """A node's geometry is used as stored although something (e.g. a parent transform) moves it."""


class SegmentationLabelWarning(UserWarning):
    """A labelmap holds label values that no requested segment takes."""


def _scene_or_default(scene):
    return scene if scene is not None else slicer.mrmlScene


# --- volumes -------------------------------------------------------------------------------------------


def _set_node_geometry(node, image: sitk.Image) -> None:
    """Copy the LPS geometry of ``image`` to ``node`` in RAS."""
    direction_lps = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    direction_ras = _LPS_FROM_RAS @ direction_lps
    matrix = vtk.vtkMatrix4x4()
    for row in range(3):
        for column in range(3):
            matrix.SetElement(row, column, direction_ras[row, column])
    node.SetIJKToRASDirectionMatrix(matrix)
    node.SetSpacing(*image.GetSpacing())
    node.SetOrigin(*(_LPS_FROM_RAS @ np.array(image.GetOrigin(), dtype=float)))


def node_geometry_lps(node) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """``(origin_lps_mm, spacing_mm, direction_lps)`` of a volume node, as SimpleITK orders them
    (origin x, y, z; spacing x, y, z; direction row-major 3x3, columns = voxel axes i, j, k)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(matrix)
    direction_ras = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
    origin_lps = _LPS_FROM_RAS @ np.array(node.GetOrigin(), dtype=float)
    direction_lps = _LPS_FROM_RAS @ direction_ras
    return tuple(origin_lps.tolist()), tuple(node.GetSpacing()), tuple(direction_lps.ravel().tolist())


def volume_node_from_image(image: sitk.Image, name: str, scene=None):
    """A new ``vtkMRMLScalarVolumeNode`` (with display node) holding ``image``'s voxels and geometry.

    ``image``: 3D scalar SimpleITK image in LPS (e.g. CT in HU); the pixel type is kept. The node is
    added to ``scene`` (default ``slicer.mrmlScene``) only after the input has been checked.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"volume {name!r}: a 3D scalar image is needed, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    voxels_zyx = sitk.GetArrayFromImage(image)
    if voxels_zyx.dtype.itemsize == 8 and voxels_zyx.dtype.kind in "iu":
        raise ValueError(
            f"volume {name!r}: 64-bit integer voxels are not supported by Slicer volumes; "
            "cast the image (e.g. to sitkInt32) first"
        )
    scene = _scene_or_default(scene)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    _set_node_geometry(node, image)
    slicer.util.updateVolumeFromArray(node, voxels_zyx)
    node.CreateDefaultDisplayNodes()
    return node


def image_from_volume_node(node) -> sitk.Image:
    """The voxels (copied) and LPS geometry of a scalar or labelmap volume node as a SimpleITK image."""
    if node is None or node.GetImageData() is None:
        raise ValueError(f"volume node {getattr(node, 'GetName', lambda: None)()!r} has no image data")
    if node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise ValueError(
            f"volume {node.GetName()!r} has {node.GetImageData().GetNumberOfScalarComponents()} "
            "components per voxel; a scalar volume is needed"
        )
    if node.GetParentTransformNode() is not None:
        warnings.warn(
            f"volume {node.GetName()!r} is under the transform {node.GetParentTransformNode().GetName()!r};"
            " its untransformed geometry is used",
            SceneGeometryWarning,
            stacklevel=2,
        )
    image = sitk.GetImageFromArray(np.array(slicer.util.arrayFromVolume(node), copy=True))
    origin, spacing, direction = node_geometry_lps(node)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


# --- segmentations -------------------------------------------------------------------------------------


def _check_same_grid(labels: sitk.Image, reference_volume_node) -> None:
    """Raise ``ValueError`` unless ``labels`` lies voxel for voxel on the reference volume's grid."""
    dims = reference_volume_node.GetImageData().GetDimensions()
    origin, spacing, direction = node_geometry_lps(reference_volume_node)
    tolerance_mm = GRID_TOLERANCE_SPACING_FRACTION * min(spacing)
    problems = []
    if tuple(labels.GetSize()) != tuple(dims):
        problems.append(f"size {labels.GetSize()} != {tuple(dims)}")
    if not np.allclose(labels.GetSpacing(), spacing, rtol=0, atol=tolerance_mm):
        problems.append(f"spacing {labels.GetSpacing()} != {spacing} mm")
    if not np.allclose(labels.GetOrigin(), origin, rtol=0, atol=tolerance_mm):
        problems.append(f"origin {labels.GetOrigin()} != {origin} mm (LPS)")
    if not np.allclose(labels.GetDirection(), direction, rtol=0, atol=GRID_TOLERANCE_DIRECTION):
        problems.append(f"direction {labels.GetDirection()} != {direction}")
    if problems:
        raise ValueError(
            f"labelmap is not on the grid of reference volume {reference_volume_node.GetName()!r}: "
            + "; ".join(problems)
            + ". Resample it to the reference volume first."
        )


def _oriented_image(voxels_zyx: np.ndarray, reference_volume_node):
    """``vtkOrientedImageData`` with ``voxels_zyx`` on the reference volume's IJK-to-RAS geometry."""
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    image.SetDimensions(voxels_zyx.shape[::-1])
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(voxels_zyx).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    ijk_to_ras = vtk.vtkMatrix4x4()
    reference_volume_node.GetIJKToRASMatrix(ijk_to_ras)
    image.SetImageToWorldMatrix(ijk_to_ras)
    return image


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
    oriented = _oriented_image(compact_zyx, reference_volume_node)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
        oriented, node, segment_ids
    ):
        scene.RemoveNode(node)
        raise RuntimeError(f"Slicer could not import the labelmap into segmentation {node.GetName()!r}")
    return node


def _segment_id(segmentation_node, segment_name: str) -> str:
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(segment_name)
    if segment_id:
        return segment_id
    if segmentation.GetSegment(segment_name) is not None:  # a segment id is accepted too
        return segment_name
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    raise KeyError(
        f"segmentation {segmentation_node.GetName()!r} has no segment {segment_name!r}; segments: {names}"
    )


def _remove_new_nodes(scene, node_ids_before: set[str]) -> None:
    """Remove the nodes added since ``node_ids_before`` (temporary labelmap, its display and colour nodes)."""
    added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    for node in added:
        if node.GetID() not in node_ids_before:
            scene.RemoveNode(node)


def segment_mask(segmentation_node, segment_name: str, reference_volume_node) -> sitk.Image:
    """The segment ``segment_name`` (name, or id) as a uint8 0/1 image on the reference volume's grid.

    Uses the Segmentations logic's export to a labelmap node in the reference geometry (as
    ``slicer.util.arrayFromSegmentBinaryLabelmap`` does), so segments stored cropped to their extent or
    on another grid come back resampled onto the full reference grid (nearest neighbour).
    """
    segment_id = _segment_id(segmentation_node, segment_name)
    scene = segmentation_node.GetScene()
    if scene is None:
        raise ValueError(f"segmentation {segmentation_node.GetName()!r} is not in a scene")
    nodes_before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__segment_mask__")
    try:
        segment_ids = vtk.vtkStringArray()
        segment_ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, segment_ids, labelmap_node, reference_volume_node
        ):
            raise RuntimeError(
                f"Slicer could not export segment {segment_name!r} of {segmentation_node.GetName()!r}"
            )
        mask_zyx = (slicer.util.arrayFromVolume(labelmap_node) > 0).astype(np.uint8)
    finally:
        _remove_new_nodes(scene, nodes_before)
    mask = sitk.GetImageFromArray(mask_zyx)
    origin, spacing, direction = node_geometry_lps(reference_volume_node)
    mask.SetOrigin(origin)
    mask.SetSpacing(spacing)
    mask.SetDirection(direction)
    return mask


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


# --- display -------------------------------------------------------------------------------------------


def _scalar_display_node(volume_node):
    if volume_node is None:
        raise ValueError("no volume node given")
    if volume_node.GetDisplayNode() is None:
        volume_node.CreateDefaultDisplayNodes()
    return volume_node.GetDisplayNode()


def apply_hu_window(volume_node, window: HUWindow) -> None:
    """Show ``volume_node`` with ``window`` (width/level in HU): automatic window/level off."""
    display_node = _scalar_display_node(volume_node)
    was_modifying = display_node.StartModify()
    display_node.AutoWindowLevelOff()
    display_node.SetWindowLevel(window.width_hu, window.level_hu)
    display_node.EndModify(was_modifying)


def apply_volume_display_preset(volume_node, preset_id: str, volumes_logic: Any = None) -> None:
    """Apply a Volumes module display preset (e.g. ``"CT_ABDOMEN"``: W 350 / L 40, grey colour map).

    Uses ``vtkSlicerVolumesLogic.ApplyVolumeDisplayPreset`` (default logic:
    ``slicer.modules.volumes.logic()``). The presets come from the Volumes module's
    ``VolumeDisplayPresets.json``; ``KeyError`` lists the ids the logic knows when ``preset_id`` is not one.
    """
    logic = volumes_logic if volumes_logic is not None else slicer.modules.volumes.logic()
    display_node = _scalar_display_node(volume_node)
    known = list(logic.GetVolumeDisplayPresetIDs())
    if preset_id not in known:
        raise KeyError(
            f"Unknown volume display preset {preset_id!r}; the Volumes module knows: "
            f"{', '.join(known) or 'none (VolumeDisplayPresets.json not found)'}"
        )
    if not logic.ApplyVolumeDisplayPreset(display_node, preset_id):
        raise RuntimeError(
            f"The Volumes module could not apply preset {preset_id!r} to {volume_node.GetName()!r}"
        )


def write_text_table(table_node, column_names: tuple[str, ...], rows: list[tuple]) -> None:
    """Fill ``table_node`` in place with text columns ``column_names`` and ``rows`` (one value per column,
    written with ``str``), as one modification (views redraw once)."""
    was_modifying = table_node.StartModify()
    table = table_node.GetTable()
    if [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] != list(column_names):
        table_node.RemoveAllColumns()
        for name in column_names:
            column = vtk.vtkStringArray()
            column.SetName(name)
            table_node.AddColumn(column)
    table.SetNumberOfRows(len(rows))
    for row, values in enumerate(rows):
        for column, value in enumerate(values):
            table.GetColumn(column).SetValue(row, str(value))
    table.Modified()
    table_node.Modified()
    table_node.EndModify(was_modifying)
