"""Scene bridge for the future liver remnant: segments and markups planes in, FLR segments and table out.

Imports ``slicer`` MRML classes and ``slicer.util`` only (never Qt, never ``slicer.app``), so the module's
logic, Slicer's self-test and the headless tests share it. The computation is ``flr.FLRCalculator``.

Inputs are read from the CURRENT segments (the user's edits) by the segment-role rule of ``scene.roles``: the
liver segment and every tumor segment (terminology first, then name); parenchyma = liver minus tumors. Masks
are read on the reference CT volume's voxel grid (``scene.masks``). Markups planes are RAS world coordinates
(parent transforms applied); they are mapped into the reference volume's own frame (its linear parent
transform, if any, undone) and converted to LPS: (x, y, z) -> (-x, -y, z), the normal likewise. The side the
normal points to is resected; ``flip_plane_normal`` turns the plane round (the views show the normal, so the
user sees which side goes).

Outputs are two editable segments, "Resection" and "Future liver remnant", tagged
``LiverTumorSeg.Generated=FLR`` (and ``LiverTumorSeg.FLROutput=resection|remnant``, with the content digest of
what was written in ``LiverTumorSeg.FLRDigest``): a recompute only replaces segments carrying these tags. A
user's own segment of the same name is never touched; the output then gets a distinct name ("Resection
(computed)"). When the user edits an output, it is released (tags removed, ``LiverTumorSeg.FLREdited=role``
added) and used as the painted resection from then on: an edited "Resection" is resected as painted, an edited
"Future liver remnant" keeps what it holds (the rest of the liver is resected). The figures go to a table node
"FLR" (one row per figure), updated in place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from LiverTumorSegLib.core.box_masks import BoxMask
from LiverTumorSegLib.core.flr import FLRCalculator, ResectionResult, flr_table_rows
from LiverTumorSegLib.core.resection import Plane
from LiverTumorSegLib.core.terminology import load_segment_definitions
from LiverTumorSegLib.scene import segmentations
from LiverTumorSegLib.scene.masks import SegmentMaskReader
from LiverTumorSegLib.scene.observers import DebouncedObserver
from LiverTumorSegLib.scene.results import set_algorithm
from LiverTumorSegLib.scene.roles import (
    EDITED_OUTPUT_TAG,
    GENERATED_TAG,
    GENERATED_VALUE,
    find_segment_roles,
    is_generated,
    segment_tag,
)
from LiverTumorSegLib.scene.tables import find_table, keyed_values, text_columns, write_table

OUTPUT_TAG = "LiverTumorSeg.FLROutput"
DIGEST_TAG = "LiverTumorSeg.FLRDigest"  # content digest of what the planner last wrote into an output
OUTPUT_DEFINITIONS = {"resection": "flr_resection", "remnant": "flr_remnant"}  # role -> json id
TABLE_NAME = "FLR"
TABLE_SEGMENTATION_ATTRIBUTE = "LiverTumorSeg.FLRSegmentation"
TABLE_COLUMNS = ("Figure", "Value", "Unit", "Key")

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


# --- segments ------------------------------------------------------------------------------------------


def _segments(segmentation_node) -> list[tuple[str, object]]:
    segmentation = segmentation_node.GetSegmentation()
    return [
        (segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i))
        for i in range(segmentation.GetNumberOfSegments())
    ]


# --- planes --------------------------------------------------------------------------------------------


def _local_from_world(reference_volume_node) -> np.ndarray:
    """4x4 matrix from world RAS to the reference volume's own RAS frame (identity without a transform)."""
    transform_node = reference_volume_node.GetParentTransformNode() if reference_volume_node else None
    if transform_node is None:
        return np.eye(4)
    if not transform_node.IsTransformToWorldLinear():
        raise ValueError(
            f"volume {reference_volume_node.GetName()!r} is under a non-linear transform "
            f"({transform_node.GetName()!r}); harden it before planning the resection"
        )
    matrix = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToWorld(matrix)
    to_world = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    return np.linalg.inv(to_world)


def plane_from_markups(plane_node, reference_volume_node=None) -> Plane:
    """The core's LPS ``Plane`` of a ``vtkMRMLMarkupsPlaneNode`` in the reference volume's frame.

    Origin and normal are taken in world RAS (the plane's parent transforms applied), mapped into the
    frame of ``reference_volume_node`` (whose voxel grid the masks use) and flipped to LPS.
    """
    if plane_node is None or not plane_node.IsA("vtkMRMLMarkupsPlaneNode"):
        raise ValueError(f"not a markups plane node: {plane_node!r}")
    if not plane_node.GetIsPlaneValid():
        raise ValueError(f"plane {plane_node.GetName()!r} is not fully placed; place it in a view first")
    origin, normal = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    plane_node.GetOriginWorld(origin)
    plane_node.GetNormalWorld(normal)
    local = _local_from_world(reference_volume_node)
    origin_local = (local @ np.append(origin, 1.0))[:3]
    normal_local = np.linalg.inv(local[:3, :3]).T @ np.asarray(normal)  # normals map by the inverse transpose
    return Plane(tuple(_LPS_FROM_RAS @ origin_local), tuple(_LPS_FROM_RAS @ normal_local))


def flip_plane_normal(plane_node) -> None:
    """Turn the plane round (the same plane, the normal reversed): the other side is resected from now on.

    A three-point plane swaps its second and third points (the user's points stay where they were); other
    plane types get the reversed normal. ``ValueError`` when the plane is not placed.
    """
    if plane_node is None or not plane_node.IsA("vtkMRMLMarkupsPlaneNode"):
        raise ValueError(f"not a markups plane node: {plane_node!r}")
    if not plane_node.GetIsPlaneValid():
        raise ValueError(f"plane {plane_node.GetName()!r} is not fully placed; place it in a view first")
    before = [0.0, 0.0, 0.0]
    plane_node.GetNormalWorld(before)
    if plane_node.GetPlaneType() == slicer.vtkMRMLMarkupsPlaneNode.PlaneType3Points:
        first = plane_node.GetNthControlPointPositionWorld(1)
        second = plane_node.GetNthControlPointPositionWorld(2)
        was_modifying = plane_node.StartModify()
        plane_node.SetNthControlPointPositionWorld(1, second)
        plane_node.SetNthControlPointPositionWorld(2, first)
        plane_node.EndModify(was_modifying)
    else:
        plane_node.SetNormalWorld([-value for value in before])
    after = [0.0, 0.0, 0.0]
    plane_node.GetNormalWorld(after)
    if float(np.dot(before, after)) > -0.999:
        raise ValueError(f"plane {plane_node.GetName()!r} could not be flipped (plane type {plane_node.GetPlaneType()})")


# --- outputs -------------------------------------------------------------------------------------------


def find_output_segment(segmentation_node, role: str) -> str | None:
    """Id of the generated output segment of ``role`` ("resection" or "remnant"), None if there is none."""
    for segment_id, segment in _segments(segmentation_node):
        if is_generated(segment) and segment_tag(segment, OUTPUT_TAG) == role:
            return segment_id
    return None


def _free_name(segmentation_node, name: str) -> str:
    taken = {segment.GetName().strip().lower() for _, segment in _segments(segmentation_node)}
    if name.lower() not in taken:
        return name
    candidate, number = f"{name} (computed)", 2
    while candidate.lower() in taken:
        candidate, number = f"{name} (computed {number})", number + 1
    return candidate


def _add_output_segment(segmentation_node, role: str) -> str:
    definition = load_segment_definitions()[OUTPUT_DEFINITIONS[role]]
    segmentation = segmentation_node.GetSegmentation()
    preferred_id = definition.id if segmentation.GetSegment(definition.id) is None else ""
    name = _free_name(segmentation_node, definition.name)
    segment_id = segmentation.AddEmptySegment(preferred_id, name, definition.color_rgb)
    segment = segmentation.GetSegment(segment_id)
    segment.SetTerminology(definition.terminology_entry)
    segment.SetNameAutoGenerated(False)
    segment.SetColorAutoGenerated(False)
    segment.SetTag(GENERATED_TAG, GENERATED_VALUE)
    segment.SetTag(OUTPUT_TAG, role)
    set_algorithm(segment, "SEMIAUTOMATIC", "LiverTumorSeg future liver remnant")
    return segment_id


def release_output(segment, role: str) -> None:
    """Make a generated output the user's own segment (never replaced again), remembering its ``role``."""
    for tag in (GENERATED_TAG, OUTPUT_TAG, DIGEST_TAG):
        segment.RemoveTag(tag)
    segment.SetTag(EDITED_OUTPUT_TAG, role)


def write_flr_segments(segmentation_node, result: ResectionResult, reference_volume_node) -> dict[str, str]:
    """Write the resected and remnant masks into the generated output segments (created when missing).

    Returns ``{"resection": segment id, "remnant": segment id}``. Only segments tagged as generated are
    replaced; no other segment is modified. Each output records the digest of what was written (``DIGEST_TAG``),
    by which a later edit is recognised.
    """
    ids = {}
    for role, mask in (("resection", result.resected), ("remnant", result.remnant)):
        segment_id = find_output_segment(segmentation_node, role) or _add_output_segment(
            segmentation_node, role
        )
        segmentations.set_segment_mask(segmentation_node, segment_id, mask, reference_volume_node)
        digest = BoxMask.from_array(sitk.GetArrayViewFromImage(mask)).digest
        segmentation_node.GetSegmentation().GetSegment(segment_id).SetTag(DIGEST_TAG, digest)
        ids[role] = segment_id
    return ids


def find_flr_table(segmentation_node):
    """The FLR table node written for ``segmentation_node`` earlier, or None."""
    return find_table(segmentation_node.GetScene(), TABLE_SEGMENTATION_ATTRIBUTE, segmentation_node.GetID())


def update_flr_table(figures: dict, table_node=None, *, scene=None):
    """Write one row per figure (``Figure``, ``Value`` as text, ``Unit``, ``Key`` of
    ``FLRFigures.to_dict()``) into ``table_node`` in place; a new table "FLR" is added to ``scene`` when
    ``table_node`` is None or was removed from its scene."""
    rows = flr_table_rows(figures)
    if table_node is None or table_node.GetScene() is None:
        scene = scene if scene is not None else slicer.mrmlScene
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", TABLE_NAME)
        table_node.SetAttribute(GENERATED_TAG, GENERATED_VALUE)
    write_table(table_node, text_columns(TABLE_COLUMNS), [(name, value, unit, key) for key, name, value, unit in rows])
    return table_node


def table_values(table_node) -> dict[str, tuple[str, str]]:
    """``{key: (value text, unit)}`` of an FLR table node (for scripts and tests)."""
    return keyed_values(table_node, "Key", ("Value", "Unit"))


@dataclass(frozen=True)
class FLRSceneResult:
    """One FLR computation in the scene: the core result, the output segment ids, the table node and the outputs
    the user had edited, released before this computation (``(role, segment id)``; the painted resection now)."""

    result: ResectionResult
    segment_ids: dict[str, str]
    table_node: object
    released: tuple[tuple[str, str], ...] = ()


# --- live planner --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FLRParameters:
    """Resection and patient parameters (as ``FLRCalculator.compute``); None = not given."""

    resection_segment_id: str | None = None
    margin_mm: float | None = None
    drop_disconnected: bool = False
    height_cm: float | None = None
    weight_kg: float | None = None
    condition: str = "normal"


SEGMENTATION_EVENTS = (
    slicer.vtkSegmentation.SourceRepresentationModified,
    slicer.vtkSegmentation.RepresentationModified,
    slicer.vtkSegmentation.SegmentAdded,
    slicer.vtkSegmentation.SegmentRemoved,
    slicer.vtkSegmentation.SegmentModified,
)
PLANE_EVENTS = (
    slicer.vtkMRMLMarkupsNode.PointModifiedEvent,
    vtk.vtkCommand.ModifiedEvent,
    slicer.vtkMRMLTransformableNode.TransformModifiedEvent,
)


class FLRPlanner(DebouncedObserver):
    """Live FLR for one segmentation: observes its segments and the planes, recomputes on request.

    Any observed event marks the planner dirty and calls ``schedule_update()`` once until the next
    ``update_if_dirty()`` (the GUI passes a single-shot ``QTimer.start``: many events, one update).
    ``update_if_dirty()`` recomputes only what changed: segments are re-read only when they changed
    (``SegmentMaskReader``), the ``FLRCalculator`` is kept while the liver and tumor voxels are unchanged, so a
    plane move only recomputes the plane part, and nothing is recomputed or written when no input changed (e.g.
    Slicer regenerating a 3D surface). Events raised by the planner's own writes are ignored, so writing the
    outputs does not loop. ``set_observing(False)`` stops observing (module hidden, live update off) without
    dropping the planner; ``set_observing(True)`` observes again and marks it dirty.
    """

    def __init__(
        self,
        segmentation_node,
        reference_volume_node,
        *,
        schedule_update=None,
        plane_nodes=(),
        observe: bool = True,
        table_node=None,
        **parameters,
    ) -> None:
        if segmentation_node is None or reference_volume_node is None:
            raise ValueError("FLR planning needs a segmentation node and its reference CT volume node")
        super().__init__(schedule_update)
        self.segmentation_node = segmentation_node
        self.reference_volume_node = reference_volume_node
        self.parameters = FLRParameters(**parameters)
        self.table_node = table_node or find_flr_table(segmentation_node)
        self.last: FLRSceneResult | None = None
        self.reader = SegmentMaskReader(segmentation_node, reference_volume_node)
        self._observe = False
        self._calculator = None
        self._inputs_digest: tuple | None = None  # digests of the liver and tumor masks of the calculator
        self._last_state: tuple | None = None
        self._written: dict[str, tuple] = {}  # output segment id -> reader fingerprint right after our write
        self._resection: tuple | None = None  # (digest, full-grid mask image) of the painted resection
        self.plane_nodes: tuple = ()
        self.set_plane_nodes(plane_nodes)
        self.set_observing(observe)

    # parameters and observation

    def set_parameters(self, **changes) -> None:
        """Change parameters (field names of ``FLRParameters``; ``TypeError`` for others); marks dirty when one
        changed."""
        parameters = dataclasses.replace(self.parameters, **changes)
        if parameters != self.parameters:
            self.parameters = parameters
            self.mark_dirty()

    def set_plane_nodes(self, plane_nodes) -> None:
        """Use (and, while observing, observe) these markups plane nodes; marks dirty when they changed."""
        plane_nodes = tuple(node for node in plane_nodes if node is not None)
        if plane_nodes == self.plane_nodes and self.last is not None:
            return
        self.plane_nodes = plane_nodes
        if self._observe:
            self.observe("planes", self.plane_nodes, PLANE_EVENTS)
        self.mark_dirty()

    def set_observing(self, observe: bool) -> None:
        """Observe the segments and the planes (``True``) or nothing (``False``)."""
        observe = bool(observe)
        if observe == self._observe and (self.observing or not observe):
            return
        self._observe = observe
        if observe:
            self.observe("segmentation", [self.segmentation_node.GetSegmentation()], SEGMENTATION_EVENTS)
            self.observe("planes", self.plane_nodes, PLANE_EVENTS)
            self.mark_dirty()  # edits made while nobody watched
        else:
            self.remove_observers()

    @property
    def observing_inputs(self) -> bool:
        return self._observe

    # computation

    def update_if_dirty(self) -> FLRSceneResult | None:
        """Recompute and write the outputs if an input changed since the last update; else None."""
        if not self.dirty:
            return None
        return self._update(force=False)

    def update(self) -> FLRSceneResult:
        """Recompute and write the outputs now (``ValueError`` with a clear message on missing inputs)."""
        return self._update(force=True)

    def _update(self, force: bool) -> FLRSceneResult | None:
        self._start_update()
        released = self._release_edited_outputs()
        parameters = self.parameters
        planes = tuple(plane_from_markups(node, self.reference_volume_node) for node in self.plane_nodes)
        resection_digest, resection_mask = self._resection_mask(parameters.resection_segment_id)
        calculator, inputs_digest = self._current_calculator(parameters.resection_segment_id)
        state = (inputs_digest, resection_digest, planes, parameters)
        if not force and not released and self.last is not None and state == self._last_state:
            return None
        result = calculator.compute(
            resection_mask=resection_mask,
            planes=planes,
            margin_mm=parameters.margin_mm,
            drop_disconnected=parameters.drop_disconnected,
            height_cm=parameters.height_cm,
            weight_kg=parameters.weight_kg,
            condition=parameters.condition,
        )
        with self.writing():
            ids = write_flr_segments(self.segmentation_node, result, self.reference_volume_node)
            self.table_node = update_flr_table(
                result.figures.to_dict(), self.table_node, scene=self.segmentation_node.GetScene()
            )
            self.table_node.SetAttribute(TABLE_SEGMENTATION_ATTRIBUTE, self.segmentation_node.GetID())
        self._written = {segment_id: self.reader.fingerprint(segment_id) for segment_id in ids.values()}
        self._last_state = state
        self.last = FLRSceneResult(result, ids, self.table_node, released)
        return self.last

    def _release_edited_outputs(self) -> tuple[tuple[str, str], ...]:
        """Release the outputs whose voxels differ from what the planner wrote; the last one released becomes
        the painted resection (``parameters.resection_segment_id``)."""
        released = []
        segmentation = self.segmentation_node.GetSegmentation()
        for role in OUTPUT_DEFINITIONS:
            segment_id = find_output_segment(self.segmentation_node, role)
            if segment_id is None:
                continue
            stored = segment_tag(segmentation.GetSegment(segment_id), DIGEST_TAG)
            if stored is None or self._written.get(segment_id) == self.reader.fingerprint(segment_id):
                continue
            if self.reader.mask(segment_id).digest == stored:
                self._written[segment_id] = self.reader.fingerprint(segment_id)
                continue
            release_output(segmentation.GetSegment(segment_id), role)
            self._written.pop(segment_id, None)
            released.append((role, segment_id))
        if released:
            self.parameters = dataclasses.replace(self.parameters, resection_segment_id=released[-1][1])
        return tuple(released)

    def _current_calculator(self, resection_segment_id: str | None):
        exclude = (resection_segment_id,) if resection_segment_id else ()
        roles = find_segment_roles(self.segmentation_node, exclude)
        liver = self.reader.mask(roles.liver_id)
        tumor = self.reader.union(roles.tumor_ids)
        digests = (liver.digest, tumor.digest if roles.tumor_ids else None)
        if self._calculator is None or digests != self._inputs_digest:
            parenchyma = segmentations.image_on_volume_grid(liver.full().astype(np.uint8), self.reference_volume_node)
            tumor_image = (segmentations.image_on_volume_grid(tumor.full().astype(np.uint8), self.reference_volume_node)
                           if roles.tumor_ids else None)
            try:
                self._calculator = FLRCalculator(parenchyma, tumor_image)
            except ValueError as error:
                raise ValueError(f"liver segment {roles.liver_id!r}: {error}") from error
            self._inputs_digest = digests
        return self._calculator, digests

    def _resection_mask(self, segment_id: str | None):
        """(digest, full-grid mask) of the painted resection; an edited remnant resects the rest of the liver."""
        if not segment_id:
            return None, None
        segment = self.segmentation_node.GetSegmentation().GetSegment(segment_id)
        if segment is None:
            raise ValueError(
                f"the painted resection segment {segment_id!r} is not in {self.segmentation_node.GetName()!r}"
            )
        if is_generated(segment):
            raise ValueError(
                f"segment {segment.GetName()!r} is a computed FLR output and is replaced on every update; "
                "paint the resection in a segment of your own"
            )
        painted = self.reader.mask(segment_id)
        digest = (painted.digest, segment_tag(segment, EDITED_OUTPUT_TAG))
        if self._resection is None or self._resection[0] != digest:
            mask = painted.full()
            if digest[1] == "remnant":
                mask = ~mask  # keep what the edited remnant holds: everything else of the liver is resected
            self._resection = (digest, segmentations.image_on_volume_grid(mask.astype(np.uint8),
                                                                          self.reference_volume_node))
        return self._resection


def compute_flr_in_scene(
    segmentation_node, reference_volume_node, *, plane_nodes=(), **parameters
) -> FLRSceneResult:
    """One FLR computation without observers: outputs and table written, result returned."""
    planner = FLRPlanner(
        segmentation_node, reference_volume_node, plane_nodes=plane_nodes, observe=False, **parameters
    )
    return planner.update()
