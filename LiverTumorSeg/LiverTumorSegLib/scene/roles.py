"""Segment roles: which segments of a segmentation are the liver and which are tumors. One rule, used by the
measurements table, the future liver remnant, the HU-range segment and TNM staging (no Qt).

- **Liver**: the segment whose terminology type is Liver (SCT 10200004); when several are, the one named
  "Liver" first. Without a coded liver, the segment named "liver" (any case). Renaming the coded liver in
  Segment Editor therefore keeps it the liver.
- **Tumors**: every segment whose terminology type is a neoplasm or a mass (Neoplasm SCT 108369006, primary
  or secondary malignant neoplasm SCT 86049000 / 14799000, Mass SCT 4147007, Lesion SCT 52988006), and
  every segment named like a tumor ("Liver tumor", "Tumor", "Tumor 2", "Lesion 3", "Metastasis", ...). Any
  number of them: a tumor the user adds by hand counts everywhere. Tumors overlap freely (the per-lesion
  segments lie inside "Liver tumor"); every role uses their union.
- **Never inputs**: segments this library computes from the inputs (FLR outputs, tag
  ``LiverTumorSeg.Generated``; an FLR output the user edited, tag ``LiverTumorSeg.FLREdited``; HU-range
  segments, tag ``LiverTumorSeg.HURange``) and the ids a caller excludes (the painted resection).

Terminology is read from the segment's serialized ``TerminologyEntry`` tag, so no terminology dictionary is
needed (the slicer-core wheel has none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import vtk

GENERATED_TAG = "LiverTumorSeg.Generated"  # "FLR" on the segments the FLR planner writes
GENERATED_VALUE = "FLR"
EDITED_OUTPUT_TAG = "LiverTumorSeg.FLREdited"  # "resection" | "remnant": an FLR output the user edited
HU_RANGE_TAG = "LiverTumorSeg.HURange"  # "lower upper" on HU-range segments

LIVER_TYPE_CODES = frozenset({("SCT", "10200004")})
TUMOR_TYPE_CODES = frozenset({
    ("SCT", "108369006"),  # Neoplasm
    ("SCT", "86049000"),  # Malignant neoplasm, primary
    ("SCT", "14799000"),  # Neoplasm, metastatic
    ("SCT", "4147007"),  # Mass
    ("SCT", "52988006"),  # Lesion
})
LIVER_NAME = re.compile(r"liver")  # names are compared lower-case and stripped, whole name
TUMOR_NAME = re.compile(r"(liver )?(tumou?r|lesion|metastasis|metastases|mass|hcc)( \d+)?")
_DERIVED_TAGS = (GENERATED_TAG, EDITED_OUTPUT_TAG, HU_RANGE_TAG)


class MissingLiverSegment(ValueError):
    """The segmentation has no segment with the liver role."""


@dataclass(frozen=True)
class SegmentRoles:
    """The liver segment id and the tumor segment ids (possibly none) of one segmentation."""

    liver_id: str
    tumor_ids: tuple[str, ...]

    @property
    def all_ids(self) -> tuple[str, ...]:
        return (self.liver_id, *self.tumor_ids)


def segment_tag(segment, key: str) -> str | None:
    """The value of the segment tag ``key``, or None when the segment has no such tag."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(key, value) else None


def is_generated(segment) -> bool:
    """True for a segment the FLR planner writes and replaces (tag ``LiverTumorSeg.Generated=FLR``)."""
    return segment_tag(segment, GENERATED_TAG) == GENERATED_VALUE


def is_derived(segment) -> bool:
    """True for segments computed from the inputs (FLR outputs, edited or not, and HU-range segments)."""
    return any(segment_tag(segment, tag) is not None for tag in _DERIVED_TAGS)


def type_code(segment) -> tuple[str, str] | None:
    """(scheme, code) of the segment's terminology type, from the serialized ``TerminologyEntry`` tag."""
    parts = (segment.GetTerminology() or "").split("~")
    fields = parts[2].split("^") if len(parts) > 2 else []
    return (fields[0], fields[1]) if len(fields) >= 2 and fields[1] else None


def _segments(segmentation_node) -> list[tuple[str, object]]:
    segmentation = segmentation_node.GetSegmentation()
    return [(segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i))
            for i in range(segmentation.GetNumberOfSegments())]


def _name(segment) -> str:
    return segment.GetName().strip().lower()


def find_segment_roles(segmentation_node, exclude: tuple[str, ...] = ()) -> SegmentRoles:
    """The liver and tumor segments of ``segmentation_node`` by the rule of this module.

    ``exclude``: segment ids that are never inputs (e.g. the painted resection). Raises
    ``MissingLiverSegment`` (a ``ValueError``) naming the segments when there is no liver.
    """
    if segmentation_node is None:
        raise MissingLiverSegment("no segmentation selected")
    candidates = [(sid, s) for sid, s in _segments(segmentation_node) if sid not in exclude and not is_derived(s)]
    coded_livers = [sid for sid, s in candidates if type_code(s) in LIVER_TYPE_CODES]
    named_livers = [sid for sid, s in candidates if LIVER_NAME.fullmatch(_name(s))]
    livers = [sid for sid in coded_livers if sid in named_livers] or coded_livers or named_livers
    if not livers:
        names = [segment.GetName() for _, segment in _segments(segmentation_node)]
        raise MissingLiverSegment(
            f"segmentation {segmentation_node.GetName()!r} has no liver segment (terminology type Liver, "
            f"SCT 10200004, or the name 'Liver'); its segments: {names}. Segment the liver first or name "
            "the liver segment 'Liver'."
        )
    liver_id = livers[0]
    tumors = [sid for sid, s in candidates
              if sid != liver_id and (type_code(s) in TUMOR_TYPE_CODES or TUMOR_NAME.fullmatch(_name(s)))]
    return SegmentRoles(liver_id, tuple(tumors))
