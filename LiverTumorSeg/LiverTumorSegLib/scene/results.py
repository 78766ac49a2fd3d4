"""Scene bridge for the worker's results: segmentation node, measurements table, HU-range segment (no Qt).

``import_results`` turns a worker output folder (``labels.nrrd`` 0/1/2 on the input CT grid,
``results.json``) into a NEW segmentation node next to the CT in the subject hierarchy; an earlier
result, possibly edited by the user, is never reused or overwritten (``find_previous_results`` and
``was_edited`` let the GUI say so). The new node lies in the CT's study (subject hierarchy) and under the CT's
parent transform: the worker computes on the CT's own voxel grid, so the labels share that grid and the same
transform maps both (exact, also under Slicer's non-linear acquisition regularization transform; hardening the
CT instead would resample it). Measurements are always computed from the CURRENT segments with the liver and
tumor roles (``scene.roles``: terminology first, then name; any number of tumor segments) on the CT's voxel
grid. ``MeasurementsUpdater`` recomputes the table after edits, once per burst of segmentation events.

Imports ``slicer`` MRML classes and ``slicer.util`` only, never Qt or ``slicer.app``. Arrays are (z, y, x).
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from LiverTumorSegLib.core.box_masks import BoxMask, cropped_image
from LiverTumorSegLib.core.measurements import (
    LabelmapMeasurements,
    connected_components,
    measure_labelmap,
    measure_lesions,
)
from LiverTumorSegLib.core.terminology import load_segment_definitions
from LiverTumorSegLib.scene import segmentations
from LiverTumorSegLib.scene import volumes as scene_bridge
from LiverTumorSegLib.scene.masks import SegmentMaskReader
from LiverTumorSegLib.scene.observers import DebouncedObserver
from LiverTumorSegLib.scene.roles import HU_RANGE_TAG, MissingLiverSegment, find_segment_roles
from LiverTumorSegLib.scene.tables import Column, find_table, write_table

RESULT_ATTRIBUTE = "LiverTumorSeg.Result"  # "cascade" on nodes made by import_results
SOURCE_VOLUME_ATTRIBUTE = "LiverTumorSeg.SourceVolumeID"
CONTENT_HASH_ATTRIBUTE = "LiverTumorSeg.ContentHash"
LIVER_MODEL_ATTRIBUTE = "LiverTumorSeg.LiverModel"
TUMOR_MODEL_ATTRIBUTE = "LiverTumorSeg.TumorModel"
DEMO_ATTRIBUTE = "LiverTumorSeg.DemoModels"  # "true" when any model used is a demo model
DEVICE_ATTRIBUTE = "LiverTumorSeg.Device"
TABLE_SEGMENTATION_ATTRIBUTE = "LiverTumorSeg.MeasurementsOf"  # on the table: segmentation node id
LESION_TAG = "LiverTumorSeg.Lesion"  # segment tag: lesion id
TUMOR_DEFINITION = "liver_tumor"  # segment_terminology.json id of the tumor segments (lesions share it)
HU_RANGE_DEFINITION = "hu_range"
# DICOM SEG export (Slicer's DICOMSegmentationPlugin) reads these segment tags; a non-manual segment needs a name.
ALGORITHM_TYPE_TAG = "DICOM.SegmentAlgorithmType"  # MANUAL | SEMIAUTOMATIC | AUTOMATIC
ALGORITHM_NAME_TAG = "DICOM.SegmentAlgorithmName"


class SceneResultsWarning(UserWarning):
    """Something in the results is incomplete but usable (no 3D surface, an empty HU-range segment)."""


# --- import ------------------------------------------------------------------------------------------


def _read_outputs(output_dir: Path) -> tuple[sitk.Image, dict]:
    labels_path, results_path = output_dir / "labels.nrrd", output_dir / "results.json"
    for path in (labels_path, results_path):
        if not path.is_file():
            raise FileNotFoundError(f"segmentation result file not found: {path}")
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{results_path}: not valid JSON ({error})") from error
    models = results.get("models") if isinstance(results, dict) else None
    if not isinstance(models, dict) or not all(isinstance(m, dict | None) for m in models.values()):
        raise ValueError(f'{results_path}: expected an object with "models": {{"liver": {{...}}, ...}}')
    try:
        labels = sitk.ReadImage(str(labels_path))
    except RuntimeError as error:
        raise ValueError(f"{labels_path}: not an image SimpleITK can read") from error
    return labels, results


def _unique_node_name(scene, base: str) -> str:
    taken = {scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())}
    name, number = base, 2
    while name in taken:
        name, number = f"{base} ({number})", number + 1
    return name


def import_results(output_dir, volume_node, *, per_lesion_segments: bool = False, scene=None):
    """A NEW segmentation node "<volume name> liver segmentation" from a worker output folder.

    Segments "Liver" and "Liver tumor" (terminology and colours of ``segment_terminology.json``) come
    from ``labels.nrrd``, which must lie on ``volume_node``'s voxel grid (``ValueError`` naming the file
    otherwise); with ``per_lesion_segments`` also "Lesion 1", "Lesion 2", ... (26-connected tumor
    components, largest first as in the lesion table; tumor terminology; one extra labelmap layer, since
    they overlap "Liver tumor"). The node gets the CT as reference geometry, the models and demo flag of
    ``results.json`` as attributes, a content hash (see ``was_edited``), a parent in the subject
    hierarchy equal to the volume's (its study), the volume's parent transform (the labels lie on the
    volume's own grid, so the same transform places both exactly), a visible display node and a closed
    surface for 3D. The segments carry the DICOM SEG algorithm tags (automatic, the model ids), so Slicer's
    DICOM SEG export takes the node when the CT came from the DICOM database (``dicom_seg_export_problems``).
    Nothing is added to the scene when the inputs are unreadable.
    """
    if volume_node is None or volume_node.GetImageData() is None:
        raise ValueError("importing segmentation results needs the CT volume node they were computed on")
    output_dir = Path(output_dir)
    labels, results = _read_outputs(output_dir)
    scene = scene if scene is not None else (volume_node.GetScene() or slicer.mrmlScene)
    name = _unique_node_name(scene, f"{volume_node.GetName()} liver segmentation")
    try:
        node = segmentations.labelmap_to_segmentation(labels, volume_node, name=name, scene=scene)
    except ValueError as error:
        raise ValueError(f"{output_dir / 'labels.nrrd'}: {error}") from error
    try:
        if per_lesion_segments:
            _add_lesion_segments(node, labels, volume_node)
        _set_result_attributes(node, volume_node, results)
        _set_algorithm_tags(node, results)
        place_next_to(node, volume_node)
        node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        _show(node)
        node.SetAttribute(CONTENT_HASH_ATTRIBUTE, content_digest(node, volume_node))
    except Exception:  # leave the scene as it was
        display_nodes = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        for removed in [*display_nodes, node]:
            scene.RemoveNode(removed)
        raise
    return node


def _lesion_colors(count: int) -> list[tuple[float, float, float]]:
    """Shades of the tumor colour, lighter for larger lesions (all recognisably "tumor")."""
    red, green, blue = load_segment_definitions()[TUMOR_DEFINITION].color_rgb
    hue, saturation, value = colorsys.rgb_to_hsv(red, green, blue)
    return [
        colorsys.hsv_to_rgb(hue, saturation, value * (1.0 - 0.55 * index / max(count - 1, 1)))
        for index in range(count)
    ]


def _add_lesion_segments(node, labels: sitk.Image, volume_node) -> list[str]:
    components = connected_components(labels == 2)
    lesions_zyx = sitk.GetArrayFromImage(components)
    count = int(lesions_zyx.max()) if lesions_zyx.size else 0
    if count == 0:
        return []
    if count > 255:
        raise ValueError(f"{count} lesions: at most 255 lesion segments can be created")
    segmentation = node.GetSegmentation()
    entry = load_segment_definitions()[TUMOR_DEFINITION].terminology_entry
    segment_ids = vtk.vtkStringArray()
    for lesion_id, color in enumerate(_lesion_colors(count), start=1):
        segment_id = segmentation.GenerateUniqueSegmentID(f"lesion_{lesion_id}")
        segmentation.AddEmptySegment(segment_id, f"Lesion {lesion_id}", color)
        segment = segmentation.GetSegment(segment_id)
        segment.SetTerminology(entry)
        segment.SetTag(LESION_TAG, str(lesion_id))
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        segment_ids.InsertNextValue(segment_id)
    ids = [segment_ids.GetValue(i) for i in range(segment_ids.GetNumberOfValues())]
    segmentations.import_labelmap_segments(node, lesions_zyx, ids, volume_node)
    return ids


def _set_result_attributes(node, volume_node, results: dict) -> None:
    liver, tumor = results["models"].get("liver") or {}, results["models"].get("tumor") or {}
    node.SetAttribute(RESULT_ATTRIBUTE, "cascade")
    node.SetAttribute(SOURCE_VOLUME_ATTRIBUTE, volume_node.GetID())
    node.SetAttribute(LIVER_MODEL_ATTRIBUTE, str(liver.get("id", "")))
    node.SetAttribute(TUMOR_MODEL_ATTRIBUTE, str(tumor.get("id", "")))
    demo = any(bool(model.get("demo_only")) for model in (liver, tumor))
    node.SetAttribute(DEMO_ATTRIBUTE, "true" if demo else "false")
    node.SetAttribute(DEVICE_ATTRIBUTE, str(results.get("device", "")))


def set_algorithm(segment, kind: str, name: str) -> None:
    """Tag how ``segment`` was made for DICOM SEG export: ``kind`` MANUAL, SEMIAUTOMATIC or AUTOMATIC and the
    algorithm ``name`` (required for the latter two)."""
    if kind not in ("MANUAL", "SEMIAUTOMATIC", "AUTOMATIC"):
        raise ValueError(f"algorithm type {kind!r} is not MANUAL, SEMIAUTOMATIC or AUTOMATIC")
    segment.SetTag(ALGORITHM_TYPE_TAG, kind)
    segment.SetTag(ALGORITHM_NAME_TAG, name)


def _set_algorithm_tags(node, results: dict) -> None:
    models = [model.get("id") for model in (results["models"].get("liver"), results["models"].get("tumor"))
              if model and model.get("id")]
    name = "LiverTumorSeg " + " + ".join(models) if models else "LiverTumorSeg"
    for segment_id in segmentations.segment_ids(node):
        set_algorithm(node.GetSegmentation().GetSegment(segment_id), "AUTOMATIC", name)


def result_info(segmentation_node) -> dict:
    """``{"liver_model", "tumor_model", "demo_models", "device"}`` recorded by ``import_results``
    (``tumor_model`` None when the liver stage ran alone; all None on a node not made by it)."""

    def attribute(name: str) -> str | None:
        return segmentation_node.GetAttribute(name) or None

    demo = attribute(DEMO_ATTRIBUTE)
    return {
        "liver_model": attribute(LIVER_MODEL_ATTRIBUTE),
        "tumor_model": attribute(TUMOR_MODEL_ATTRIBUTE),
        "demo_models": None if demo is None else demo == "true",
        "device": attribute(DEVICE_ATTRIBUTE),
    }


def _subject_hierarchy_item(subject_hierarchy, node) -> int:
    """The node's subject hierarchy item; created under the scene item when the node has none (Slicer's
    GUI creates items as nodes are added, the headless scene does not)."""
    item = subject_hierarchy.GetItemByDataNode(node)
    if not item:
        item = subject_hierarchy.CreateItem(subject_hierarchy.GetSceneItemID(), node)
    return item


def place_next_to(node, volume_node) -> None:
    """Put ``node`` under the subject hierarchy parent of ``volume_node`` (its study, if it has one)."""
    subject_hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    if subject_hierarchy is None:
        raise RuntimeError(f"scene of {node.GetName()!r} has no subject hierarchy node")
    parent = subject_hierarchy.GetItemParent(_subject_hierarchy_item(subject_hierarchy, volume_node))
    subject_hierarchy.SetItemParent(_subject_hierarchy_item(subject_hierarchy, node), parent)


def _show(node) -> None:
    """Visible in slice views (outline and fill) and in 3D (closed surface; warns when it cannot be made)."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display_node = node.GetDisplayNode()
    display_node.SetVisibility(True)
    display_node.SetVisibility2D(True)
    display_node.SetVisibility3D(True)
    try:
        made = node.CreateClosedSurfaceRepresentation()
    except Exception as error:  # a conversion failure must not lose the imported segments
        made, reason = False, f"{type(error).__name__}: {error}"
    else:
        reason = "the binary labelmap to closed surface conversion failed"
    if not made:
        warnings.warn(
            f"segmentation {node.GetName()!r}: no 3D surface ({reason}); slice views are unaffected",
            SceneResultsWarning,
            stacklevel=3,
        )


# --- earlier results, edits -----------------------------------------------------------------------------


def content_digest(segmentation_node, volume_node) -> str:
    """Fingerprint of the segments (ids and voxel masks exported onto ``volume_node``'s grid): equal
    digests = same segments with the same voxels, however Slicer stores them (layers, extents)."""
    digest = hashlib.blake2b(digest_size=16)
    for segment_id in segmentations.segment_ids(segmentation_node):
        mask_zyx = sitk.GetArrayFromImage(
            segmentations.segment_mask(segmentation_node, segment_id, volume_node)
        )
        digest.update(segment_id.encode() + b"\0" + str(mask_zyx.shape).encode())
        digest.update(np.packbits(mask_zyx.reshape(-1) != 0).tobytes())
    return digest.hexdigest()


def find_previous_results(volume_node) -> list:
    """Segmentation nodes ``import_results`` made for ``volume_node`` in its scene, oldest first."""
    scene = volume_node.GetScene()
    if scene is None:
        return []
    nodes = [
        scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))
    ]
    return [
        node
        for node in nodes
        if node.GetAttribute(RESULT_ATTRIBUTE) == "cascade"
        and node.GetAttribute(SOURCE_VOLUME_ATTRIBUTE) == volume_node.GetID()
    ]


def was_edited(segmentation_node, volume_node=None) -> bool:
    """Whether the segments differ from what ``import_results`` created (voxels, segments added or
    removed). ``volume_node``: the CT (default: the segmentation's reference geometry volume)."""
    stored = segmentation_node.GetAttribute(CONTENT_HASH_ATTRIBUTE)
    if not stored:
        raise ValueError(f"segmentation {segmentation_node.GetName()!r} was not created by import_results")
    if volume_node is None:
        volume_node = segmentation_node.GetNodeReference(
            slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        )
    if volume_node is None:
        raise ValueError(f"segmentation {segmentation_node.GetName()!r}: its CT volume is not in the scene")
    return content_digest(segmentation_node, volume_node) != stored


# --- measurements -----------------------------------------------------------------------------------------


def _role_masks(reader: SegmentMaskReader) -> tuple[BoxMask, BoxMask]:
    """(liver, union of the tumors) of the CURRENT segments, by the segment-role rule (``scene.roles``)."""
    roles = find_segment_roles(reader.segmentation_node)
    reader.forget(keep=roles.all_ids)
    return reader.mask(roles.liver_id), reader.union(roles.tumor_ids)


def current_labelmap(segmentation_node, volume_node, *, reader: SegmentMaskReader | None = None) -> sitk.Image:
    """0/1/2 uint8 labelmap on ``volume_node``'s grid of the current segments: 1 the liver segment, 2 every tumor
    segment (tumor wins where they overlap; see ``scene.roles`` for which segments these are). LPS geometry of
    the CT. ``MissingLiverSegment`` (a ``ValueError``) when there is no liver."""
    reader = reader or SegmentMaskReader(segmentation_node, volume_node)
    liver, tumor = _role_masks(reader)
    labels_zyx = np.zeros(reader.shape_zyx, np.uint8)
    if not liver.is_empty:
        labels_zyx[liver.slices()][liver.box] = 1
    if not tumor.is_empty:
        labels_zyx[tumor.slices()][tumor.box] = 2
    return segmentations.image_on_volume_grid(labels_zyx, volume_node)


class SegmentationMeasurer:
    """Measures the liver and tumor segments of one segmentation on its CT's grid, reading only the segments
    that changed (``SegmentMaskReader``) and measuring inside their bounding box; the lesion table is
    recomputed only when the tumor voxels changed. ``measure()`` equals ``measure_labelmap(current_labelmap())``.
    """

    def __init__(self, segmentation_node, volume_node) -> None:
        self.reader = SegmentMaskReader(segmentation_node, volume_node)
        self._lesions: tuple[str, list] | None = None  # (tumor digest, lesion table)

    def measure(self) -> tuple[LabelmapMeasurements, tuple[str, str]]:
        """The measurements and their content key (liver digest, tumor digest): equal keys, equal tables."""
        liver, tumor = _role_masks(self.reader)
        grid = scene_bridge.node_grid(self.reader.reference_volume_node)
        voxel_ml = float(np.prod(grid.spacing_mm)) / 1000.0
        overlap = int(np.count_nonzero(liver.region(tumor.start_zyx, tumor.stop_zyx) & tumor.box)) if not (
            liver.is_empty or tumor.is_empty) else 0
        parenchyma_ml = (liver.count - overlap) * voxel_ml
        tumor_ml = tumor.count * voxel_ml
        key = (liver.digest, tumor.digest)
        if self._lesions is None or self._lesions[0] != key[1]:
            lesions = [] if tumor.is_empty else measure_lesions(
                cropped_image(tumor.box.astype(np.uint8), tumor.start_zyx, grid), tumor_label=1)
            self._lesions = (key[1], lesions)
        return LabelmapMeasurements(parenchyma_ml + tumor_ml, parenchyma_ml, tumor_ml, list(self._lesions[1])), key


def measure_segmentation(segmentation_node, volume_node) -> LabelmapMeasurements:
    """Volumes (mL) and the lesion table of the current liver and tumor segments (``SegmentationMeasurer``)."""
    return SegmentationMeasurer(segmentation_node, volume_node).measure()[0]


MEASUREMENT_COLUMNS = (
    Column("Structure", "text", "", "Liver (total) = parenchyma + tumors; Lesion k = k-th largest"),
    Column("Lesion id", "number", "", "1 = largest lesion (26-connected tumor components)"),
    Column("Volume (mL)", "number", "mL", "Voxel count x voxel volume"),
    Column("Lesion count", "number", "", "Number of tumor components"),
    Column("Longest axial diameter (mm)", "number", "mm", "Largest in-plane Feret diameter over axial slices"),
    Column("Centroid L (mm)", "number", "mm", "Centre of mass, LPS patient coordinate x"),
    Column("Centroid P (mm)", "number", "mm", "Centre of mass, LPS patient coordinate y"),
    Column("Centroid S (mm)", "number", "mm", "Centre of mass, LPS patient coordinate z"),
)


def measurement_rows(measurements: LabelmapMeasurements) -> list[tuple]:
    """Table rows (values in ``MEASUREMENT_COLUMNS`` order; NaN where a column does not apply)."""
    nan = math.nan
    lesions = measurements.lesions
    largest_mm = max((lesion.longest_axial_diameter_mm for lesion in lesions), default=nan)
    rows = [
        ("Liver (total)", nan, measurements.liver_volume_ml, nan, nan, nan, nan, nan),
        ("Liver parenchyma", nan, measurements.parenchyma_volume_ml, nan, nan, nan, nan, nan),
        ("Tumor (total)", nan, measurements.tumor_volume_ml, float(len(lesions)), largest_mm, nan, nan, nan),
    ]
    for lesion in lesions:
        rows.append(
            (f"Lesion {lesion.id}", float(lesion.id), lesion.volume_ml, nan, lesion.longest_axial_diameter_mm)
            + tuple(lesion.centroid_mm)
        )
    return rows


def find_measurements_table(segmentation_node):
    """The measurements table node written for ``segmentation_node``, or None."""
    return find_table(segmentation_node.GetScene(), TABLE_SEGMENTATION_ATTRIBUTE, segmentation_node.GetID())


def update_measurements_table(segmentation_node, volume_node, table_node=None, *, labels=None, measurements=None):
    """Measure the CURRENT segments into a table node, in place.

    Rows: "Liver (total)", "Liver parenchyma", "Tumor (total)" (with the lesion count and the largest
    lesion diameter), then "Lesion 1", ... (id, volume, longest axial diameter, LPS centroid). Columns
    ``MEASUREMENT_COLUMNS``: numbers are double columns (NaN where a column does not apply), units in the column
    names and as unit labels. Default table: the one written earlier for this segmentation, else a new
    "<segmentation name> measurements" next to the segmentation in the subject hierarchy. ``measurements``
    (``LabelmapMeasurements``) or ``labels`` (a 0/1/2 labelmap to measure): what the caller has already.
    """
    if measurements is None:
        measurements = (measure_labelmap(labels) if labels is not None
                        else measure_segmentation(segmentation_node, volume_node))
    rows = measurement_rows(measurements)
    if table_node is None or table_node.GetScene() is None:
        table_node = find_measurements_table(segmentation_node)
    if table_node is None:
        scene = segmentation_node.GetScene()
        table_node = scene.AddNewNodeByClass(
            "vtkMRMLTableNode", _unique_node_name(scene, f"{segmentation_node.GetName()} measurements")
        )
        place_next_to(table_node, segmentation_node)
    table_node.SetAttribute(TABLE_SEGMENTATION_ATTRIBUTE, segmentation_node.GetID())
    write_table(table_node, MEASUREMENT_COLUMNS, rows)
    return table_node


SEGMENTATION_EVENTS = (
    slicer.vtkSegmentation.SegmentModified,
    slicer.vtkSegmentation.SegmentAdded,
    slicer.vtkSegmentation.SegmentRemoved,
    slicer.vtkSegmentation.SourceRepresentationModified,
)


class MeasurementsUpdater(DebouncedObserver):
    """Keeps the measurements table of one segmentation up to date with the user's edits (no Qt).

    Segmentation events (``SEGMENTATION_EVENTS``) mark the updater dirty and call ``schedule_update()``
    once per burst (until the next ``update_if_dirty``); the GUI passes a single-shot ``QTimer.start``
    whose timeout calls ``update_if_dirty()``. Only the segments that changed are read again, and the table
    is rewritten only when the liver or tumor voxels changed (not for e.g. a new HU-range segment, a renamed
    colour or a regenerated 3D surface); see ``SegmentationMeasurer``. Updates raise ``MissingLiverSegment``
    (a ``ValueError``) when there is no liver segment; call ``remove_observers()`` before dropping the updater.
    """

    def __init__(self, segmentation_node, volume_node, *, schedule_update=None, table_node=None) -> None:
        if segmentation_node is None or volume_node is None:
            raise ValueError("measurements need a segmentation node and its CT volume node")
        super().__init__(schedule_update)
        self.segmentation_node = segmentation_node
        self.volume_node = volume_node
        self.table_node = table_node
        self.measurer = SegmentationMeasurer(segmentation_node, volume_node)
        self._last_key: tuple | None = None
        self.observe("segmentation", [segmentation_node.GetSegmentation()], SEGMENTATION_EVENTS)

    def update_if_dirty(self):
        """Recompute the table if the liver or tumor voxels changed since the last update: the table
        node, or None when nothing had to be done."""
        if not self.dirty:
            return None
        return self._update(force=False)

    def update(self):
        """Recompute the table now; returns the table node."""
        return self._update(force=True)

    def _update(self, force: bool):
        self._start_update()
        measurements, key = self.measurer.measure()
        table_alive = self.table_node is not None and self.table_node.GetScene() is not None
        if not force and table_alive and key == self._last_key:
            return None
        with self.writing():
            self.table_node = update_measurements_table(
                self.segmentation_node, self.volume_node, self.table_node, measurements=measurements
            )
        self._last_key = key
        return self.table_node


# --- HU range segment ---------------------------------------------------------------------------------


def _hu_range_name(segment_name: str, lower_hu: float, upper_hu: float) -> str:
    separator = "-" if lower_hu >= 0 and upper_hu >= 0 else " to "
    return f"{segment_name} {lower_hu:g}{separator}{upper_hu:g} HU"


def _unique_segment_name(segmentation, name: str) -> str:
    candidate, number = name, 2
    while segmentation.GetSegmentIdBySegmentName(candidate):
        candidate, number = f"{name} ({number})", number + 1
    return candidate


def _region_mask(segmentation_node, volume_node, within_segment: str | None) -> tuple[np.ndarray, str]:
    """(z, y, x) bool mask of the region the HU range is taken in, and its display name: the whole liver (the
    liver segment and every tumor segment, ``scene.roles``) when ``within_segment`` is None or names the liver
    segment, else that one segment."""
    reader = SegmentMaskReader(segmentation_node, volume_node)
    segmentation = segmentation_node.GetSegmentation()
    if within_segment is None:
        roles = find_segment_roles(segmentation_node)
        return reader.union(roles.all_ids).full(), segmentation.GetSegment(roles.liver_id).GetName()
    try:
        segment_id = segmentations.resolve_segment_id(segmentation_node, within_segment)
    except KeyError:
        raise ValueError(
            f"segmentation {segmentation_node.GetName()!r} has no segment {within_segment!r} to take the HU "
            f"range in; segments: {segmentations.segment_names(segmentation_node)}"
        ) from None
    try:
        roles = find_segment_roles(segmentation_node)
    except MissingLiverSegment:
        roles = None
    ids = roles.all_ids if roles is not None and roles.liver_id == segment_id else (segment_id,)
    return reader.union(ids).full(), segmentation.GetSegment(segment_id).GetName()


def add_hu_range_segment(
    segmentation_node,
    volume_node,
    lower_hu: float,
    upper_hu: float,
    *,
    within_segment: str | None = None,
    name: str | None = None,
):
    """Add a NEW editable segment: the voxels of ``within_segment`` whose CT value is in
    [``lower_hu``, ``upper_hu``] (inclusive). Returns its segment id.

    ``within_segment`` (name or id): None or the liver segment means the whole liver (the liver and every
    tumor segment, ``scene.roles``); another segment means that segment alone. Default name e.g. "Liver 0-60
    HU" (made unique). The segment gets the terminology of ``hu_range`` in ``segment_terminology.json`` (liver
    tissue) and the DICOM SEG algorithm tags (semi-automatic), so that DICOM SEG export accepts it. Existing
    segments are not modified (the new one gets its own labelmap layer). ``ValueError`` when the segment is
    missing or ``lower_hu > upper_hu``; ``SceneResultsWarning`` when no voxel is in the range (the empty
    segment is still added).
    """
    lower_hu, upper_hu = float(lower_hu), float(upper_hu)
    if not (math.isfinite(lower_hu) and math.isfinite(upper_hu)) or lower_hu > upper_hu:
        raise ValueError(
            f"HU range [{lower_hu:g}, {upper_hu:g}]: lower and upper must be numbers, lower <= upper"
        )
    region, region_name = _region_mask(segmentation_node, volume_node, within_segment)
    ct_zyx = slicer.util.arrayFromVolume(volume_node)
    if ct_zyx.shape != region.shape:
        raise ValueError(f"volume {volume_node.GetName()!r} {ct_zyx.shape} and mask {region.shape} differ")
    selected = region & (ct_zyx >= lower_hu) & (ct_zyx <= upper_hu)
    segmentation = segmentation_node.GetSegmentation()
    segment_name = _unique_segment_name(segmentation, name or _hu_range_name(region_name, lower_hu, upper_hu))
    definition = load_segment_definitions()[HU_RANGE_DEFINITION]
    segment_id = segmentation.AddEmptySegment(
        segmentation.GenerateUniqueSegmentID("hu_range"), segment_name, definition.color_rgb
    )
    segment = segmentation.GetSegment(segment_id)
    segment.SetTerminology(definition.terminology_entry)
    segment.SetTag(HU_RANGE_TAG, f"{lower_hu:g} {upper_hu:g}")
    set_algorithm(segment, "SEMIAUTOMATIC", "LiverTumorSeg HU range")
    segment.SetNameAutoGenerated(False)
    segment.SetColorAutoGenerated(False)
    try:
        segmentations.import_labelmap_segments(segmentation_node, selected, [segment_id], volume_node)
    except RuntimeError:
        segmentation.RemoveSegment(segment_id)
        raise
    if not selected.any():
        warnings.warn(
            f"{segment_name!r}: no voxel of {region_name!r} is within the range",
            SceneResultsWarning,
            stacklevel=2,
        )
    return segment_id
