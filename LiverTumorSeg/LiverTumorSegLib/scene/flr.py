"""Scene bridge for the future liver remnant: segments and markups planes in, FLR segments and table out.

Imports ``slicer`` MRML classes and ``slicer.util`` only (never Qt, never ``slicer.app``), so the module's
logic, Slicer's self-test and the headless tests share it. The computation is ``flr.FLRCalculator``.

Inputs are read from the CURRENT segments (the user's edits): the liver segment (terminology type Liver,
SCT 10200004, else the name "Liver") and every tumor segment (type Neoplasm / primary / secondary, else
the name "Liver tumor" or "Tumor"); parenchyma = liver minus tumors. Masks are exported onto the reference
CT volume's voxel grid. Markups planes are RAS world coordinates (parent transforms applied); they are
mapped into the reference volume's own frame (its linear parent transform, if any, undone) and converted
to LPS: (x, y, z) -> (-x, -y, z), the normal likewise. The side the normal points to is resected.

Outputs are two editable segments, "Resection" and "Future liver remnant", tagged
``LiverTumorSeg.Generated=FLR`` (and ``LiverTumorSeg.FLROutput=resection|remnant``): a recompute only
replaces segments carrying these tags. A user's own segment of the same name is never touched; the
output then gets a distinct name ("Resection (computed)"). The figures go to a table node "FLR" (one row
per figure), updated in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from LiverTumorSegLib.core.flr import FLRCalculator, ResectionResult, flr_table_rows
from LiverTumorSegLib.core.resection import Plane
from LiverTumorSegLib.core.terminology import load_segment_definitions
from LiverTumorSegLib.scene import segmentations
from LiverTumorSegLib.scene.observers import DebouncedObserver
from LiverTumorSegLib.scene.tables import find_table, keyed_values, text_columns, write_table

GENERATED_TAG = "LiverTumorSeg.Generated"
GENERATED_VALUE = "FLR"
OUTPUT_TAG = "LiverTumorSeg.FLROutput"
OUTPUT_DEFINITIONS = {"resection": "flr_resection", "remnant": "flr_remnant"}  # role -> json id
TABLE_NAME = "FLR"
TABLE_SEGMENTATION_ATTRIBUTE = "LiverTumorSeg.FLRSegmentation"
TABLE_COLUMNS = ("Figure", "Value", "Unit", "Key")

LIVER_TYPE_CODES = frozenset({("SCT", "10200004")})
TUMOR_TYPE_CODES = frozenset({("SCT", "108369006"), ("SCT", "86049000"), ("SCT", "14799000")})
LIVER_NAME = re.compile(r"liver")  # names are compared lower-case, whole name
TUMOR_NAME = re.compile(r"(liver )?tumou?r( \d+)?")
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


# --- segments ------------------------------------------------------------------------------------------


def _segments(segmentation_node) -> list[tuple[str, object]]:
    segmentation = segmentation_node.GetSegmentation()
    return [
        (segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i))
        for i in range(segmentation.GetNumberOfSegments())
    ]


def _tag(segment, key: str) -> str | None:
    value = vtk.reference("")
    return str(value) if segment.GetTag(key, value) else None


def is_generated(segment) -> bool:
    """True for a segment this bridge wrote (tag ``LiverTumorSeg.Generated=FLR``)."""
    return _tag(segment, GENERATED_TAG) == GENERATED_VALUE


def _type_code(segment) -> tuple[str, str] | None:
    """(scheme, code) of the segment's terminology type, from the serialized ``TerminologyEntry``."""
    parts = (segment.GetTerminology() or "").split("~")
    fields = parts[2].split("^") if len(parts) > 2 else []
    return (fields[0], fields[1]) if len(fields) >= 2 and fields[1] else None


def _coded(candidates, codes) -> list[str]:
    return [sid for sid, segment in candidates if _type_code(segment) in codes]


def _named(candidates, pattern: re.Pattern) -> list[str]:
    return [sid for sid, segment in candidates if pattern.fullmatch(segment.GetName().strip().lower())]


def find_input_segments(segmentation_node, exclude: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """``(liver segment id, tumor segment ids)`` of a segmentation; generated FLR segments and the ids in
    ``exclude`` (e.g. the painted resection) are never inputs. ``ValueError`` when there is no liver.

    The liver is the segment with terminology type Liver (the one named "Liver" first when several are),
    else the segment named "Liver". Tumors are all segments with a neoplasm type or a tumor name ("Liver
    tumor", "Tumor", "Tumor 2", ...), so tumors the user adds by hand count too.
    """
    candidates = [(sid, s) for sid, s in _segments(segmentation_node) if not is_generated(s)]
    candidates = [(sid, s) for sid, s in candidates if sid not in exclude]
    livers = _coded(candidates, LIVER_TYPE_CODES) or _named(candidates, LIVER_NAME)
    if not livers:
        names = [segment.GetName() for _, segment in _segments(segmentation_node)]
        raise ValueError(
            f"segmentation {segmentation_node.GetName()!r} has no liver segment (a segment named 'Liver' "
            f"or with terminology type Liver, SCT 10200004); its segments: {names}. Segment the liver first."
        )
    named = [sid for sid in livers if sid in _named(candidates, LIVER_NAME)]
    liver_id = (named or livers)[0]
    tumors = _coded(candidates, TUMOR_TYPE_CODES) + _named(candidates, TUMOR_NAME)
    return liver_id, [sid for sid in dict.fromkeys(tumors) if sid != liver_id]


def mask_digest(mask: sitk.Image) -> str:
    """Content fingerprint of a mask (its non-zero voxels); equal digests = equal masks."""
    packed = np.packbits(sitk.GetArrayViewFromImage(mask).reshape(-1) != 0)
    return hashlib.blake2b(packed.tobytes(), digest_size=16).hexdigest() + str(mask.GetSize())


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


# --- outputs -------------------------------------------------------------------------------------------


def find_output_segment(segmentation_node, role: str) -> str | None:
    """Id of the generated output segment of ``role`` ("resection" or "remnant"), None if there is none."""
    for segment_id, segment in _segments(segmentation_node):
        if is_generated(segment) and _tag(segment, OUTPUT_TAG) == role:
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
    return segment_id


def write_flr_segments(segmentation_node, result: ResectionResult, reference_volume_node) -> dict[str, str]:
    """Write the resected and remnant masks into the generated output segments (created when missing).

    Returns ``{"resection": segment id, "remnant": segment id}``. Only segments tagged as generated are
    replaced; no other segment is modified.
    """
    ids = {}
    for role, mask in (("resection", result.resected), ("remnant", result.remnant)):
        segment_id = find_output_segment(segmentation_node, role) or _add_output_segment(
            segmentation_node, role
        )
        segmentations.set_segment_mask(segmentation_node, segment_id, mask, reference_volume_node)
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
    """One FLR computation in the scene: the core result, the output segment ids and the table node."""

    result: ResectionResult
    segment_ids: dict[str, str]
    table_node: object


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
    ``update_if_dirty()`` recomputes only what changed: the ``FLRCalculator`` is kept while the liver and
    tumor masks are unchanged (content fingerprints), so a plane move only recomputes the plane part, and
    nothing is recomputed or written when no input changed (e.g. Slicer regenerating a 3D surface). Events
    raised by the planner's own writes are ignored, so writing the outputs does not loop.
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
        self._observe = observe
        self._calculator = None
        self._input_keys: tuple = (None, None)  # (segment fingerprint, content digests)
        self._resection: tuple = (None, None, None)  # (segment fingerprint, content digest, mask)
        self._last_state: tuple | None = None
        self.plane_nodes: tuple = ()
        if observe:
            self.observe("segmentation", [segmentation_node.GetSegmentation()], SEGMENTATION_EVENTS)
        self.set_plane_nodes(plane_nodes)

    # parameters and observation

    def set_parameters(self, **changes) -> None:
        """Change parameters (field names of ``FLRParameters``; ``TypeError`` for others); marks dirty."""
        self.parameters = dataclasses.replace(self.parameters, **changes)
        self.mark_dirty()

    def set_plane_nodes(self, plane_nodes) -> None:
        """Use (and observe) these markups plane nodes; marks dirty."""
        self.plane_nodes = tuple(node for node in plane_nodes if node is not None)
        if self._observe:
            self.observe("planes", self.plane_nodes, PLANE_EVENTS)
        self.mark_dirty()

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
        parameters = self.parameters
        planes = tuple(plane_from_markups(node, self.reference_volume_node) for node in self.plane_nodes)
        resection_digest, resection_mask = self._resection_mask(parameters.resection_segment_id)
        calculator, inputs_digest = self._current_calculator(parameters.resection_segment_id)
        state = (inputs_digest, resection_digest, planes, parameters)
        if not force and self.last is not None and state == self._last_state:
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
        self._last_state = state
        self.last = FLRSceneResult(result, ids, self.table_node)
        return self.last

    def _fingerprint(self, segment_ids) -> tuple:
        """Cheap change key of segments: id, label value and modification time of the source labelmap."""
        segmentation = self.segmentation_node.GetSegmentation()
        source = segmentation.GetSourceRepresentationName()
        key = []
        for segment_id in segment_ids:
            segment = segmentation.GetSegment(segment_id)
            representation = segment.GetRepresentation(source)
            key.append(
                (segment_id, segment.GetLabelValue(), representation.GetMTime() if representation else 0)
            )
        return tuple(key)

    def _current_calculator(self, resection_segment_id: str | None):
        exclude = (resection_segment_id,) if resection_segment_id else ()
        liver_id, tumor_ids = find_input_segments(self.segmentation_node, exclude)
        fingerprint = self._fingerprint([liver_id, *tumor_ids])
        if self._calculator is not None and fingerprint == self._input_keys[0]:
            return self._calculator, self._input_keys[1]
        parenchyma = segmentations.segments_mask(self.segmentation_node, [liver_id], self.reference_volume_node)
        tumor = (
            segmentations.segments_mask(self.segmentation_node, tumor_ids, self.reference_volume_node)
            if tumor_ids
            else None
        )
        digests = (mask_digest(parenchyma), mask_digest(tumor) if tumor is not None else None)
        if self._calculator is None or digests != self._input_keys[1]:
            try:
                self._calculator = FLRCalculator(parenchyma, tumor)
            except ValueError as error:
                raise ValueError(f"liver segment {liver_id!r}: {error}") from error
        self._input_keys = (fingerprint, digests)
        return self._calculator, digests

    def _resection_mask(self, segment_id: str | None):
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
        fingerprint = self._fingerprint([segment_id])
        if fingerprint != self._resection[0]:
            mask = segmentations.segments_mask(self.segmentation_node, [segment_id], self.reference_volume_node)
            self._resection = (fingerprint, mask_digest(mask), mask)
        return self._resection[1], self._resection[2]


def compute_flr_in_scene(
    segmentation_node, reference_volume_node, *, plane_nodes=(), **parameters
) -> FLRSceneResult:
    """One FLR computation without observers: outputs and table written, result returned."""
    planner = FLRPlanner(
        segmentation_node, reference_volume_node, plane_nodes=plane_nodes, observe=False, **parameters
    )
    return planner.update()
