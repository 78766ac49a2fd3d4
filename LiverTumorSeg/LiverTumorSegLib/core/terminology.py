"""Segment definitions for segmentation nodes: names, colours and terminology, read from data.

``Resources/segment_terminology.json`` lists each segment the pipeline creates (``liver``,
``liver_tumor``, ...) with its display name, colour and DICOM/Slicer terminology codes. This module reads
that file and builds the strings Slicer stores on a segment: the ``TerminologyEntry`` tag, serialized as
``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry`` does::

    context~catScheme^catCode^catMeaning~typeScheme^typeCode^typeMeaning~modScheme^modCode^modMeaning
           ~anatomicContext~regionScheme^regionCode^regionMeaning~regionModScheme^regionModCode^regionModMeaning

(one line; an absent code is written ``^^``). The serialized form needs no terminology dictionary, so it
works where Slicer's ``*.term.json`` files are not installed (the slicer-core wheel).

Pure Python: this half of the scene bridge imports neither ``slicer`` nor Qt, so the background worker
may use ``segment_specs()`` to write a ``.seg.nrrd`` with the same names, colours and codes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from LiverTumorSegLib.resources import TERMINOLOGY_FILE

TERMINOLOGY_TAG = "TerminologyEntry"

# Label value in the pipeline's labelmaps -> segment id (a key of segment_terminology.json).
DEFAULT_SEGMENTS: Mapping[int, str] = MappingProxyType({1: "liver", 2: "liver_tumor"})


@dataclass(frozen=True)
class SegmentSpec:
    """One segment of a labelmap: its label value, display name, colour (0..1) and terminology entry."""

    segment_id: str
    name: str
    label_value: int
    color_rgb: tuple[float, float, float]
    terminology_entry: str = ""


@dataclass(frozen=True)
class Code:
    """A coded concept (DICOM code sequence item): scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str

    def serialized(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


def _serialized(code: Code | None) -> str:
    return code.serialized() if code is not None else "^^"


@dataclass(frozen=True)
class SegmentDefinition:
    """One segment: id, display name, colour (0-255 RGB) and terminology (category, type, region)."""

    id: str
    name: str
    default_label_value: int
    color_rgb255: tuple[int, int, int]
    context: str
    category: Code
    type: Code
    type_modifier: Code | None = None
    anatomic_context: str = ""
    anatomic_region: Code | None = None
    anatomic_region_modifier: Code | None = None

    @property
    def color_rgb(self) -> tuple[float, float, float]:
        """Colour as Slicer's segments store it: r, g, b in [0, 1]."""
        r, g, b = (c / 255.0 for c in self.color_rgb255)
        return (r, g, b)

    @property
    def terminology_entry(self) -> str:
        """The serialized ``TerminologyEntry`` tag value (format in the module docstring)."""
        return "~".join(
            [
                self.context,
                self.category.serialized(),
                self.type.serialized(),
                _serialized(self.type_modifier),
                self.anatomic_context,
                _serialized(self.anatomic_region),
                _serialized(self.anatomic_region_modifier),
            ]
        )


def _code(entry: Mapping | None, where: str) -> Code | None:
    if entry is None:
        return None
    try:
        return Code(str(entry["CodingSchemeDesignator"]), str(entry["CodeValue"]), str(entry["CodeMeaning"]))
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"{where}: a code needs CodingSchemeDesignator, CodeValue and CodeMeaning"
        ) from error


def _definition(entry: Mapping, path: Path) -> SegmentDefinition:
    where = f"{path}: segment {entry.get('id', '?')!r}"
    terminology = entry["terminology"]
    color = tuple(int(c) for c in entry["color_rgb"])
    if len(color) != 3 or not all(0 <= c <= 255 for c in color):
        raise ValueError(f"{where}: color_rgb must be three integers in 0..255, got {entry['color_rgb']!r}")
    for text in (entry["name"], terminology["context"], terminology.get("anatomic_context", "")):
        if any(separator in text for separator in "~^|"):
            raise ValueError(f"{where}: {text!r} contains a terminology separator (~ ^ |)")
    return SegmentDefinition(
        id=str(entry["id"]),
        name=str(entry["name"]),
        default_label_value=int(entry["default_label_value"]),
        color_rgb255=color,  # type: ignore[arg-type]
        context=str(terminology["context"]),
        category=_code(terminology["category"], where),  # type: ignore[arg-type]
        type=_code(terminology["type"], where),  # type: ignore[arg-type]
        type_modifier=_code(terminology.get("type_modifier"), where),
        anatomic_context=str(terminology.get("anatomic_context", "")),
        anatomic_region=_code(terminology.get("anatomic_region"), where),
        anatomic_region_modifier=_code(terminology.get("anatomic_region_modifier"), where),
    )


def load_segment_definitions(path: str | Path = TERMINOLOGY_FILE) -> dict[str, SegmentDefinition]:
    """Read the segment definitions file; returns ``{segment id: SegmentDefinition}`` in file order."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["segments"]
        definitions = [_definition(entry, path) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"Cannot read segment definitions from {path}: {error}") from error
    by_id: dict[str, SegmentDefinition] = {}
    for definition in definitions:
        if definition.id in by_id:
            raise ValueError(f"{path}: duplicate segment id {definition.id!r}")
        by_id[definition.id] = definition
    return by_id


def get_segment_definition(segment_id: str, path: str | Path = TERMINOLOGY_FILE) -> SegmentDefinition:
    """One definition by segment id, with an error listing the known ids."""
    definitions = load_segment_definitions(path)
    try:
        return definitions[segment_id]
    except KeyError:
        raise KeyError(
            f"Unknown segment id {segment_id!r} (not in {Path(path).name}); known: {', '.join(definitions)}"
        ) from None


def segment_specs(segments: Mapping[int, str] = DEFAULT_SEGMENTS) -> list[SegmentSpec]:
    """``.seg.nrrd`` segment specs (``seg_nrrd.write_seg_nrrd``) for ``{label value: segment id}``."""
    definitions = load_segment_definitions()
    specs = []
    for label_value, segment_id in segments.items():
        if segment_id not in definitions:
            get_segment_definition(segment_id)  # raises the error that lists the known ids
        definition = definitions[segment_id]
        specs.append(
            SegmentSpec(
                segment_id,
                definition.name,
                int(label_value),
                definition.color_rgb,
                definition.terminology_entry,
            )
        )
    return specs
