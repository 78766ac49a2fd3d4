"""Volume nodes: SimpleITK images to scalar volume nodes and back, their voxel grid, HU display.

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
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer
import slicer.util
import vtk

from LiverTumorSegLib.core.grid import Grid, check_same_grid
from LiverTumorSegLib.core.hu_windows import HUWindow

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


class SceneGeometryWarning(UserWarning):
    """A node's geometry is used as stored although something (e.g. a parent transform) moves it."""


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


def image_from_volume_node(node, *, local_frame: bool = False) -> sitk.Image:
    """The voxels (copied) and LPS geometry of a scalar or labelmap volume node as a SimpleITK image.

    The geometry is the node's own (a parent transform is not applied): ``SceneGeometryWarning`` says so,
    unless ``local_frame`` tells that the caller works in that frame on purpose (e.g. a segmentation run whose
    result is placed under the same transform)."""
    if node is None or node.GetImageData() is None:
        raise ValueError(f"volume node {getattr(node, 'GetName', lambda: None)()!r} has no image data")
    if node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise ValueError(
            f"volume {node.GetName()!r} has {node.GetImageData().GetNumberOfScalarComponents()} "
            "components per voxel; a scalar volume is needed"
        )
    if node.GetParentTransformNode() is not None and not local_frame:
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


def node_grid(volume_node) -> Grid:
    """The voxel grid of a volume node (its own IJK-to-RAS geometry, in LPS like SimpleITK's)."""
    origin, spacing, direction = node_geometry_lps(volume_node)
    return Grid(tuple(volume_node.GetImageData().GetDimensions()), spacing, origin, direction)


def _check_same_grid(labels: sitk.Image, reference_volume_node) -> None:
    """Raise ``ValueError`` unless ``labels`` lies voxel for voxel on the reference volume's grid."""
    try:
        check_same_grid(labels, node_grid(reference_volume_node), "labelmap",
                        f"reference volume {reference_volume_node.GetName()!r}")
    except ValueError as error:
        raise ValueError(f"{error}. Resample it to the reference volume first.") from None


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
